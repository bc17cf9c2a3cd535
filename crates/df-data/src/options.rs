//! Loader options.

use std::path::PathBuf;

use crate::report::OnError;

/// Whether (and how thoroughly) loaders check the image files of a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageCheck {
    /// Do not touch image files: load annotations only (default).
    #[default]
    None,
    /// Check that every image file exists.
    Exists,
    /// Read every image's header (format and dimensions).
    Header,
    /// Decode every image fully.
    Decode,
}

/// Options common to the dataset loaders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Fail on the first bad item (default) or skip bad items and report them.
    pub on_error: OnError,
    /// Image validation done at load time (default: none).
    pub check_images: ImageCheck,
    /// Resolve image paths against this directory instead of the dataset root.
    pub image_root: Option<PathBuf>,
}

impl LoadOptions {
    /// Default options: fail on errors, no image check, images under the dataset root.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the error policy.
    pub fn on_error(mut self, on_error: OnError) -> Self {
        self.on_error = on_error;
        self
    }

    /// Skips bad items (shorthand for `on_error(OnError::Skip)`).
    pub fn skip_errors(self) -> Self {
        self.on_error(OnError::Skip)
    }

    /// Sets the image check done at load time.
    pub fn check_images(mut self, check: ImageCheck) -> Self {
        self.check_images = check;
        self
    }

    /// Resolves images against `dir` instead of the dataset root.
    pub fn image_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.image_root = Some(dir.into());
        self
    }
}
