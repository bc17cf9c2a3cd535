//! Text preprocessing of the BLIP-2 encoders (SPEC §2 "tokenizer", §5 "text processor").
//!
//! Two steps, as in LAVIS / SPRC:
//!
//! 1. caption cleaning, LAVIS's `blip_caption` processor ([`pre_caption`]): lower-case, replace each of
//!    `` . ! " ( ) * # : ; ~ `` by a space, collapse runs of two or more whitespace characters into one
//!    space, strip trailing newlines and surrounding spaces, keep at most 50 words;
//! 2. BERT WordPiece tokenisation with `[CLS] … [SEP]`, truncated to `max_txt_len` (32) tokens (a
//!    truncated sequence still ends with `[SEP]`) and padded with `[PAD]` to `max_txt_len`
//!    (`padding="max_length", truncation=True`), or to the longest sequence of the batch.
//!
//! The result is a [`TextBatch`]: `input_ids` and `attention_mask`, both `[B, L]` `u32`.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use tokenizers::{
    PaddingDirection, PaddingParams, PostProcessor, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use crate::error::{EncoderError, Result};

/// Default maximum text length in tokens, special tokens included (BLIP-2 / SPRC `max_txt_len`).
pub const DEFAULT_MAX_TXT_LEN: usize = 32;
/// Default maximum number of words kept by [`pre_caption`] (LAVIS `blip_caption`).
pub const DEFAULT_MAX_WORDS: usize = 50;

const IN_MEMORY: &str = "<in memory>";

/// How a batch of token sequences is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaddingStrategy {
    /// Pad every sequence to `max_txt_len` (`padding="max_length"`, the LAVIS / SPRC default):
    /// tensors are `[B, max_txt_len]`.
    #[default]
    MaxLength,
    /// Pad to the longest sequence of the batch (`padding="longest"` / `True`): tensors are
    /// `[B, L]` with `L ≤ max_txt_len`.
    Longest,
}

/// A tokenised batch of texts.
#[derive(Debug, Clone)]
pub struct TextBatch {
    /// Token ids, `[B, L]` `u32`: `[CLS] tokens… [SEP] [PAD]…`.
    pub input_ids: Tensor,
    /// Attention mask, `[B, L]` `u32`: 1 for real tokens (special tokens included), 0 for padding.
    pub attention_mask: Tensor,
}

impl TextBatch {
    /// Batch size `B`.
    pub fn batch_size(&self) -> usize {
        self.input_ids.dims().first().copied().unwrap_or(0)
    }

    /// Sequence length `L`.
    pub fn seq_len(&self) -> usize {
        self.input_ids.dims().get(1).copied().unwrap_or(0)
    }
}

/// Python's `str.isspace` (what `\s` matches in a `str` regex): Unicode `White_Space` plus the
/// information separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// LAVIS `BlipCaptionProcessor.pre_caption` (the `blip_caption` text processor), step for step:
///
/// ```python
/// caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
/// caption = re.sub(r"\s{2,}", " ", caption)
/// caption = caption.rstrip("\n").strip(" ")
/// words = caption.split(" "); caption = " ".join(words[:max_words])  # if longer
/// ```
///
/// A single tab or newline inside the text is kept (as in LAVIS); runs of two or more whitespace
/// characters become one space.
///
/// ```
/// use df_encoders::text_processing::pre_caption;
/// assert_eq!(pre_caption("  Make the dog BLACK!!  (and) remove: the ball. ", 50),
///            "make the dog black and remove the ball");
/// assert_eq!(pre_caption("a b c d", 2), "a b");
/// ```
pub fn pre_caption(text: &str, max_words: usize) -> String {
    // 1. lower-case, punctuation → space
    let lowered: String = text
        .to_lowercase()
        .chars()
        .map(|c| match c {
            '.' | '!' | '"' | '(' | ')' | '*' | '#' | ':' | ';' | '~' => ' ',
            c => c,
        })
        .collect();
    // 2. every run of ≥ 2 whitespace characters → one space
    let mut collapsed = String::with_capacity(lowered.len());
    let mut chars = lowered.chars().peekable();
    while let Some(c) = chars.next() {
        if is_py_space(c) && chars.peek().is_some_and(|&n| is_py_space(n)) {
            while chars.peek().is_some_and(|&n| is_py_space(n)) {
                chars.next();
            }
            collapsed.push(' ');
        } else {
            collapsed.push(c);
        }
    }
    // 3. rstrip("\n"), strip(" ")
    let trimmed = collapsed.trim_end_matches('\n').trim_matches(' ');
    // 4. at most `max_words` words, split on single spaces
    if trimmed.split(' ').count() > max_words {
        trimmed.split(' ').take(max_words).collect::<Vec<_>>().join(" ")
    } else {
        trimmed.to_string()
    }
}

/// BERT WordPiece text processor of BLIP-2: optional LAVIS caption cleaning, `[CLS] … [SEP]`,
/// truncation to `max_txt_len` and padding; produces [`TextBatch`] tensors `[B, L]` (`u32`).
///
/// Defaults: `max_txt_len` 32, cleaning on (50 words), padding to `max_txt_len`. Padding and
/// truncation are configured on the wrapped [`tokenizers::Tokenizer`] (whatever the
/// `tokenizer.json` said is replaced).
#[derive(Clone)]
pub struct TextProcessor {
    tokenizer: Tokenizer,
    source: PathBuf,
    max_txt_len: usize,
    max_words: usize,
    clean: bool,
    padding: PaddingStrategy,
    pad_id: u32,
    pad_token: String,
}

impl std::fmt::Debug for TextProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextProcessor")
            .field("source", &self.source)
            .field("vocab_size", &self.vocab_size())
            .field("max_txt_len", &self.max_txt_len)
            .field("max_words", &self.max_words)
            .field("clean", &self.clean)
            .field("padding", &self.padding)
            .field("pad_id", &self.pad_id)
            .field("pad_token", &self.pad_token)
            .finish()
    }
}

impl TextProcessor {
    /// Loads a Hugging Face `tokenizer.json`. Errors name the file: [`EncoderError::Io`] when it
    /// cannot be read, [`EncoderError::Tokenizer`] when it cannot be parsed or has no pad token.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| EncoderError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes_with_source(&bytes, path.to_path_buf())
    }

    /// Parses the bytes of a `tokenizer.json`.
    pub fn from_bytes(bytes: impl AsRef<[u8]>) -> Result<Self> {
        Self::from_bytes_with_source(bytes.as_ref(), PathBuf::from(IN_MEMORY))
    }

    fn from_bytes_with_source(bytes: &[u8], source: PathBuf) -> Result<Self> {
        let tokenizer = Tokenizer::from_bytes(bytes).map_err(|e| EncoderError::Tokenizer {
            path: source.clone(),
            message: e.to_string(),
        })?;
        Self::with_source(tokenizer, source)
    }

    /// Wraps an existing tokenizer. The pad token is taken from its padding configuration if it has
    /// one, else `[PAD]` (then `<pad>`) from its vocabulary.
    pub fn from_tokenizer(tokenizer: Tokenizer) -> Result<Self> {
        Self::with_source(tokenizer, PathBuf::from(IN_MEMORY))
    }

    fn with_source(tokenizer: Tokenizer, source: PathBuf) -> Result<Self> {
        let (pad_id, pad_token) = match tokenizer.get_padding() {
            Some(p) => (p.pad_id, p.pad_token.clone()),
            None => ["[PAD]", "<pad>"]
                .iter()
                .find_map(|t| tokenizer.token_to_id(t).map(|id| (id, t.to_string())))
                .ok_or_else(|| EncoderError::Tokenizer {
                    path: source.clone(),
                    message: "no padding configuration and no `[PAD]` token in the vocabulary".into(),
                })?,
        };
        let mut this = Self {
            tokenizer,
            source,
            max_txt_len: DEFAULT_MAX_TXT_LEN,
            max_words: DEFAULT_MAX_WORDS,
            clean: true,
            padding: PaddingStrategy::MaxLength,
            pad_id,
            pad_token,
        };
        this.configure()?;
        Ok(this)
    }

    /// Number of special tokens the post-processor adds to one sequence (2 for BERT).
    fn n_special_tokens(&self) -> usize {
        self.tokenizer
            .get_post_processor()
            .map(|p| p.added_tokens(false))
            .unwrap_or(0)
    }

    fn configure(&mut self) -> Result<()> {
        let specials = self.n_special_tokens();
        if self.max_txt_len == 0 || self.max_txt_len < specials {
            return Err(EncoderError::InvalidConfig {
                key: "max_txt_len".into(),
                message: format!(
                    "must be at least 1 and at least the {specials} special tokens, got {}",
                    self.max_txt_len
                ),
            });
        }
        let source = self.source.clone();
        self.tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: self.max_txt_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| EncoderError::Tokenizer {
                path: source,
                message: e.to_string(),
            })?;
        self.tokenizer.with_padding(Some(PaddingParams {
            strategy: match self.padding {
                PaddingStrategy::MaxLength => tokenizers::PaddingStrategy::Fixed(self.max_txt_len),
                PaddingStrategy::Longest => tokenizers::PaddingStrategy::BatchLongest,
            },
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: self.pad_id,
            pad_type_id: 0,
            pad_token: self.pad_token.clone(),
        }));
        Ok(())
    }

    /// Builder: maximum sequence length in tokens, special tokens included (default 32).
    /// Errors with [`EncoderError::InvalidConfig`] when 0 or shorter than the special tokens.
    pub fn with_max_txt_len(mut self, max_txt_len: usize) -> Result<Self> {
        self.max_txt_len = max_txt_len;
        self.configure()?;
        Ok(self)
    }

    /// Builder: padding to `max_txt_len` (default) or to the longest sequence of each batch.
    pub fn with_padding_strategy(mut self, padding: PaddingStrategy) -> Result<Self> {
        self.padding = padding;
        self.configure()?;
        Ok(self)
    }

    /// Builder: whether [`encode_batch`](Self::encode_batch) cleans texts with [`pre_caption`]
    /// first (default `true`; `false` tokenises the raw text).
    pub fn with_cleaning(mut self, clean: bool) -> Self {
        self.clean = clean;
        self
    }

    /// Builder: the word limit of the caption cleaning (default 50).
    pub fn with_max_words(mut self, max_words: usize) -> Self {
        self.max_words = max_words;
        self
    }

    /// The wrapped tokenizer (padding and truncation configured).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The file the tokenizer was loaded from (`<in memory>` otherwise).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Maximum sequence length `L` in tokens.
    pub fn max_txt_len(&self) -> usize {
        self.max_txt_len
    }

    /// Word limit of the caption cleaning.
    pub fn max_words(&self) -> usize {
        self.max_words
    }

    /// Whether texts are cleaned before tokenisation.
    pub fn cleans(&self) -> bool {
        self.clean
    }

    /// The padding strategy.
    pub fn padding_strategy(&self) -> PaddingStrategy {
        self.padding
    }

    /// Id of the pad token (0 for BERT).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Vocabulary size including added tokens (30523 for BLIP-2's BERT + `[DEC]`).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Id of a token, if in the vocabulary (added tokens included).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// LAVIS `blip_caption` cleaning with this processor's word limit; see [`pre_caption`].
    pub fn clean_caption(&self, text: &str) -> String {
        pre_caption(text, self.max_words)
    }

    /// The strings that are tokenised: cleaned or raw, per [`with_cleaning`](Self::with_cleaning).
    pub fn prepare(&self, texts: &[&str]) -> Vec<String> {
        texts
            .iter()
            .map(|t| {
                if self.clean {
                    self.clean_caption(t)
                } else {
                    (*t).to_string()
                }
            })
            .collect()
    }

    /// Tokenises a batch: `input_ids` and `attention_mask`, both `[B, L]` `u32` on `device`, with
    /// `L = max_txt_len` ([`PaddingStrategy::MaxLength`]) or the longest sequence (≤ `max_txt_len`).
    /// Sequences are `[CLS] tokens… [SEP]` then padding; truncated ones still end with `[SEP]`.
    ///
    /// Errors: [`EncoderError::Input`] for an empty batch, [`EncoderError::Tokenizer`] when the
    /// tokenizer fails.
    pub fn encode_batch(&self, texts: &[&str], device: &Device) -> Result<TextBatch> {
        if texts.is_empty() {
            return Err(EncoderError::Input {
                name: "texts".into(),
                message: "empty batch".into(),
            });
        }
        let prepared = self.prepare(texts);
        let encodings = self
            .tokenizer
            .encode_batch(prepared, true)
            .map_err(|e| EncoderError::Tokenizer {
                path: self.source.clone(),
                message: e.to_string(),
            })?;
        let b = encodings.len();
        let l = encodings.first().map_or(0, |e| e.get_ids().len());
        let mut ids = Vec::with_capacity(b * l);
        let mut mask = Vec::with_capacity(b * l);
        for (i, e) in encodings.iter().enumerate() {
            if e.get_ids().len() != l || e.get_attention_mask().len() != l {
                return Err(EncoderError::Tokenizer {
                    path: self.source.clone(),
                    message: format!(
                        "sequence {i} has {} tokens after padding, expected {l}",
                        e.get_ids().len()
                    ),
                });
            }
            ids.extend_from_slice(e.get_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }
        Ok(TextBatch {
            input_ids: Tensor::from_vec(ids, (b, l), device)?,
            attention_mask: Tensor::from_vec(mask, (b, l), device)?,
        })
    }

    /// Tokenises one text: a [`TextBatch`] with `B = 1`, tensors `[1, L]` `u32`.
    pub fn encode(&self, text: &str, device: &Device) -> Result<TextBatch> {
        self.encode_batch(&[text], device)
    }
}
