//! A BERT WordPiece tokenizer over the toy vocabulary, built with the `tokenizers` crate.

use std::path::Path;

use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{DataError, Result};

use super::text::words;

/// Special tokens with their ids: `[PAD]`=0, `[UNK]`=1, `[CLS]`=2, `[SEP]`=3, `[MASK]`=4.
pub const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// The toy vocabulary in id order: the special tokens, every word of the generator, then the
/// letters `a`–`z`, the digits and their `##` continuations (so unexpected words never become
/// `[UNK]`).
pub fn vocabulary() -> Vec<String> {
    let mut v: Vec<String> = SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    for w in words() {
        if !v.contains(&w) {
            v.push(w);
        }
    }
    let chars = ('a'..='z').chain('0'..='9');
    for c in chars.clone() {
        let s = c.to_string();
        if !v.contains(&s) {
            v.push(s);
        }
    }
    for c in chars {
        v.push(format!("##{c}"));
    }
    v
}

fn tok_err(e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer {
        path: None,
        message: e.to_string(),
    }
}

/// Builds the toy tokenizer: WordPiece over [`vocabulary`], `BertNormalizer` (lower case),
/// `BertPreTokenizer`, `BertProcessing` (`[CLS] … [SEP]`) and a WordPiece decoder.
pub fn build_tokenizer() -> Result<Tokenizer> {
    let vocab: ahash::AHashMap<String, u32> = vocabulary()
        .into_iter()
        .enumerate()
        .map(|(i, w)| (w, i as u32))
        .collect();
    let model = WordPiece::builder()
        .vocab(vocab)
        .unk_token("[UNK]".into())
        .continuing_subword_prefix("##".into())
        .max_input_chars_per_word(100)
        .build()
        .map_err(tok_err)?;
    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .map_err(tok_err)?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    tok.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), 3),
        ("[CLS]".into(), 2),
    )));
    tok.with_decoder(Some(WordPieceDecoder::new("##".into(), true)));
    tok.add_special_tokens(SPECIAL_TOKENS.iter().map(|s| AddedToken::from(*s, true)))
        .map_err(tok_err)?;
    Ok(tok)
}

/// Builds the toy tokenizer and saves it as `tokenizer.json` at `path`.
pub fn write_tokenizer(path: &Path) -> Result<Tokenizer> {
    let tok = build_tokenizer()?;
    tok.save(path, true).map_err(|e| DataError::Tokenizer {
        path: Some(path.to_path_buf()),
        message: e.to_string(),
    })?;
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_ids_and_encoding() {
        let tok = build_tokenizer().unwrap();
        for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
            assert_eq!(tok.token_to_id(s), Some(i as u32));
        }
        let enc = tok
            .encode("Make the red circle BLUE, then remove the square", true)
            .unwrap();
        let toks = enc.get_tokens();
        assert_eq!(toks.first().map(String::as_str), Some("[CLS]"));
        assert_eq!(toks.last().map(String::as_str), Some("[SEP]"));
        assert!(!enc.get_ids().contains(&1), "{toks:?}");
        assert!(toks.contains(&"blue".to_string()));
        // Unknown words fall back to letters, not [UNK].
        let enc = tok.encode("zebra", false).unwrap();
        assert_eq!(enc.get_tokens(), ["z", "##e", "##b", "##r", "##a"]);
    }
}
