//! Dataset-independent types: [`CirSample`], [`QueryText`], [`CandidateSet`], [`Gallery`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Entry, ImageRole};
use crate::rng::Rng;

/// The modification text of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryText {
    /// One caption, used as is (CIRR `caption`, IPr2Pr `edit`, toy world).
    Single(String),
    /// The two relative captions of a Fashion IQ triplet, as stored in the file.
    FashionIq([String; 2]),
}

/// How a Fashion IQ training query text is composed from the two captions (SPRC/CLIP4Cir
/// `generate_randomized_fiq_caption`: the first part is always capitalised).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FiqTextVariant {
    /// "C1 and c2"
    FirstAndSecond,
    /// "C2 and c1"
    SecondAndFirst,
    /// "C1"
    First,
    /// "C2"
    Second,
}

impl FiqTextVariant {
    /// The four variants, in the order of SPRC's probability intervals.
    pub const ALL: [FiqTextVariant; 4] = [
        FiqTextVariant::FirstAndSecond,
        FiqTextVariant::SecondAndFirst,
        FiqTextVariant::First,
        FiqTextVariant::Second,
    ];
}

/// Python's `s.strip('.?, ')`: removes leading and trailing `.`, `?`, `,` and spaces (only those;
/// tabs and newlines are kept, as in Python).
pub fn py_strip_punct(s: &str) -> &str {
    s.trim_matches(|c| matches!(c, '.' | '?' | ',' | ' '))
}

/// Python's `str.capitalize()` (3.8+): the first character in title case, the rest in lower case.
pub fn py_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return String::new();
    };
    let mut out = String::with_capacity(s.len());
    match titlecase_digraph(first) {
        Some(t) => out.push(t),
        None => out.extend(first.to_uppercase()),
    }
    out.push_str(&chars.as_str().to_lowercase());
    out
}

/// The few characters whose title case differs from their upper case (Latin digraphs).
fn titlecase_digraph(c: char) -> Option<char> {
    Some(match c {
        '\u{01C4}'..='\u{01C6}' => '\u{01C5}',
        '\u{01C7}'..='\u{01C9}' => '\u{01C8}',
        '\u{01CA}'..='\u{01CC}' => '\u{01CB}',
        '\u{01F1}'..='\u{01F3}' => '\u{01F2}',
        _ => return None,
    })
}

impl QueryText {
    /// The raw caption(s).
    pub fn raw(&self) -> &[String] {
        match self {
            QueryText::Single(s) => std::slice::from_ref(s),
            QueryText::FashionIq(c) => c,
        }
    }

    /// The deterministic evaluation text. Single captions are returned unchanged; Fashion IQ gives
    /// `"{c1.strip('.?, ').capitalize()} and {c2.strip('.?, ')}"` (SPRC / CLIP4Cir).
    pub fn eval_text(&self) -> String {
        match self {
            QueryText::Single(s) => s.clone(),
            QueryText::FashionIq([a, b]) => {
                format!("{} and {}", py_capitalize(py_strip_punct(a)), py_strip_punct(b))
            }
        }
    }

    /// The training text for a given Fashion IQ variant (single captions ignore the variant).
    pub fn variant_text(&self, variant: FiqTextVariant) -> String {
        match self {
            QueryText::Single(s) => s.clone(),
            QueryText::FashionIq([a, b]) => {
                let (a, b) = (py_strip_punct(a), py_strip_punct(b));
                match variant {
                    FiqTextVariant::FirstAndSecond => format!("{} and {b}", py_capitalize(a)),
                    FiqTextVariant::SecondAndFirst => format!("{} and {a}", py_capitalize(b)),
                    FiqTextVariant::First => py_capitalize(a),
                    FiqTextVariant::Second => py_capitalize(b),
                }
            }
        }
    }

    /// A training text: for Fashion IQ one of the four [`FiqTextVariant`]s chosen uniformly by
    /// `rng`; single captions are returned unchanged (and `rng` is not advanced).
    pub fn training_text(&self, rng: &mut Rng) -> String {
        match self {
            QueryText::Single(s) => s.clone(),
            QueryText::FashionIq(_) => {
                let v = FiqTextVariant::ALL[rng.below(4)];
                self.variant_text(v)
            }
        }
    }
}

/// A CIRR candidate set (`img_set`): the reference, the target and 4 other similar images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateSet {
    /// `img_set.id`.
    pub id: u64,
    /// `img_set.members` (image names; 6 in CIRR, reference and target included).
    pub members: Vec<String>,
    /// `img_set.reference_rank`, if present.
    pub reference_rank: Option<u32>,
    /// `img_set.target_rank`, if present (absent in CIRR test1).
    pub target_rank: Option<u32>,
}

/// One composed-retrieval query: a reference image, a modification text and (except in test splits)
/// a target image. Images are named; resolve names with the split's [`Gallery`].
#[derive(Debug, Clone, PartialEq)]
pub struct CirSample {
    /// Identifier: CIRR `pairid`; the entry index for Fashion IQ and IPr2Pr.
    pub pair_id: u64,
    /// Where the sample comes from in its annotation file.
    pub source: Entry,
    /// Reference image name.
    pub reference: String,
    /// Modification text.
    pub text: QueryText,
    /// Target image name (`None` in test splits).
    pub target: Option<String>,
    /// CIRR `target_soft` (name, score) pairs in name order; empty elsewhere.
    pub target_soft: Vec<(String, f32)>,
    /// CIRR `img_set`; `None` elsewhere.
    pub candidates: Option<CandidateSet>,
}

impl CirSample {
    /// The evaluation query text (see [`QueryText::eval_text`]).
    pub fn query_text(&self) -> String {
        self.text.eval_text()
    }

    /// Every image name the sample refers to, with its role (reference, target, soft targets,
    /// candidate-set members; names may repeat across roles).
    pub fn image_names(&self) -> Vec<(ImageRole, &str)> {
        let mut v = vec![(ImageRole::Reference, self.reference.as_str())];
        if let Some(t) = &self.target {
            v.push((ImageRole::Target, t.as_str()));
        }
        for (n, _) in &self.target_soft {
            v.push((ImageRole::SoftTarget, n.as_str()));
        }
        if let Some(c) = &self.candidates {
            for m in &c.members {
                v.push((ImageRole::Member, m.as_str()));
            }
        }
        v
    }
}

/// One gallery image: its name and resolved path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GalleryImage {
    /// Image name (as used in the annotations).
    pub name: String,
    /// Resolved path (not checked unless image validation was asked for).
    pub path: PathBuf,
}

/// The images of a split: names in file order, each with its resolved path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gallery {
    images: Vec<GalleryImage>,
    index: HashMap<String, usize>,
}

impl Gallery {
    /// An empty gallery.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an image; returns `false` (and changes nothing) if the name is already present.
    pub fn insert(&mut self, name: String, path: PathBuf) -> bool {
        if self.index.contains_key(&name) {
            return false;
        }
        self.index.insert(name.clone(), self.images.len());
        self.images.push(GalleryImage { name, path });
        true
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// `true` if the gallery has no image.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// `true` if `name` is in the gallery.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Position of `name` in the gallery order.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The image called `name`.
    pub fn get(&self, name: &str) -> Option<&GalleryImage> {
        self.position(name).and_then(|i| self.images.get(i))
    }

    /// The resolved path of `name`.
    pub fn path(&self, name: &str) -> Option<&Path> {
        self.get(name).map(|g| g.path.as_path())
    }

    /// All images in order.
    pub fn images(&self) -> &[GalleryImage] {
        &self.images
    }

    /// Iterates over the images in order.
    pub fn iter(&self) -> std::slice::Iter<'_, GalleryImage> {
        self.images.iter()
    }

    /// The image names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.images.iter().map(|g| g.name.as_str())
    }

    /// The resolved paths in order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.images.iter().map(|g| g.path.clone()).collect()
    }

    /// Keeps only the images for which `keep` returns `true` (order preserved).
    pub fn retain(&mut self, mut keep: impl FnMut(&GalleryImage) -> bool) {
        self.images.retain(|g| keep(g));
        self.index = self
            .images
            .iter()
            .enumerate()
            .map(|(i, g)| (g.name.clone(), i))
            .collect();
    }
}

impl<'a> IntoIterator for &'a Gallery {
    type Item = &'a GalleryImage;
    type IntoIter = std::slice::Iter<'a, GalleryImage>;
    fn into_iter(self) -> Self::IntoIter {
        self.images.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_strip_and_capitalize() {
        assert_eq!(py_strip_punct(" , is shiny. ?"), "is shiny");
        assert_eq!(py_strip_punct("\tx "), "\tx");
        assert_eq!(py_capitalize("is SHINY"), "Is shiny");
        assert_eq!(py_capitalize(""), "");
        assert_eq!(py_capitalize("ǆemal"), "ǅemal");
        assert_eq!(py_capitalize("éTÉ"), "Été");
    }

    #[test]
    fn fashion_iq_texts() {
        let t = QueryText::FashionIq([" is Shiny.".into(), "Fit and Flare ?".into()]);
        assert_eq!(t.eval_text(), "Is shiny and Fit and Flare");
        assert_eq!(
            t.variant_text(FiqTextVariant::SecondAndFirst),
            "Fit and flare and is Shiny"
        );
        assert_eq!(t.variant_text(FiqTextVariant::First), "Is shiny");
        assert_eq!(t.variant_text(FiqTextVariant::Second), "Fit and flare");
        let mut rng = Rng::new(0);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            seen.insert(t.training_text(&mut rng));
        }
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn gallery_basics() {
        let mut g = Gallery::new();
        assert!(g.insert("a".into(), "/x/a.png".into()));
        assert!(g.insert("b".into(), "/x/b.png".into()));
        assert!(!g.insert("a".into(), "/y/a.png".into()));
        assert_eq!(g.len(), 2);
        assert_eq!(g.path("a"), Some(Path::new("/x/a.png")));
        g.retain(|i| i.name != "a");
        assert_eq!(g.position("b"), Some(0));
        assert!(!g.contains("a"));
    }
}
