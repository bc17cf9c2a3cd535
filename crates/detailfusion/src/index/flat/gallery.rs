//! [`GalleryIndex`] for the flat index.

use std::path::{Path, PathBuf};

use candle_core::Tensor;

use super::super::backend::{Backend, GalleryIndex};
use super::super::{Hit, IndexError, IndexInfo, IndexOptions, IndexReport, Result, SearchOptions};
use super::FlatIndex;
use crate::{DetailFusion, GalleryFeatures};

impl FlatIndex {
    /// An empty index that [`GalleryIndex::persist`] writes to `path`.
    pub fn empty_at(info: IndexInfo, path: impl Into<PathBuf>) -> Self {
        let mut index = Self::empty(info);
        index.path = Some(path.into());
        index
    }
}

impl GalleryIndex for FlatIndex {
    fn backend(&self) -> Backend {
        Backend::Flat
    }

    fn location(&self) -> Option<String> {
        self.path.as_ref().map(|p| p.to_string_lossy().into_owned())
    }

    fn info(&self) -> &IndexInfo {
        FlatIndex::info(self)
    }

    fn len(&self) -> usize {
        FlatIndex::len(self)
    }

    fn names(&self) -> Result<Vec<String>> {
        Ok(FlatIndex::names(self).to_vec())
    }

    fn check_model(&self, model: &DetailFusion) -> Result<()> {
        FlatIndex::check_model(self, model)
    }

    fn add_features(&mut self, names: Vec<String>, features: &GalleryFeatures) -> Result<()> {
        FlatIndex::add_features(self, names, features)
    }

    fn add_folder(&mut self, model: &DetailFusion, dir: &Path, opts: &IndexOptions) -> Result<IndexReport> {
        FlatIndex::add_folder(self, model, dir, opts)
    }

    fn remove(&mut self, names: &[String]) -> Result<()> {
        FlatIndex::remove(self, names)
    }

    fn search_features(&self, queries: &Tensor, opts: &SearchOptions) -> Result<Vec<Vec<Hit>>> {
        FlatIndex::search_features(self, queries, opts)
    }

    fn search_per_branch(
        &self,
        di: &Tensor,
        gm: &Tensor,
        weights: &Tensor,
        opts: &SearchOptions,
    ) -> Result<Vec<Vec<Hit>>> {
        FlatIndex::search_per_branch(self, di, gm, weights, opts)
    }

    fn persist(&mut self) -> Result<()> {
        let Some(path) = self.path.clone() else {
            return Err(IndexError::input(
                "path",
                "this flat index has no file: save it first",
            ));
        };
        self.save(&path)?;
        // Map the file just written, so that searches read it in place as after `load`.
        *self = FlatIndex::load(&path)?;
        Ok(())
    }
}
