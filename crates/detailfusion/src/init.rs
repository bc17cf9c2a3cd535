//! Variable backends: trainable parameters live in a `VarMap`, filled from a checkpoint
//! where it has the tensor and from the layer's initialiser otherwise; frozen tensors are
//! recorded so the whole model can be saved.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};

/// Maps one of our parameter names to a name in the source checkpoint (`None`: not there).
pub type NameMap = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A checkpoint to initialise parameters from.
pub struct Source {
    /// The checkpoint.
    pub vb: VarBuilder<'static>,
    /// Our name → its name.
    pub map: NameMap,
}

/// Creates variables in `varmap`, taking values from the first source that has them.
pub struct InitBackend {
    pub varmap: VarMap,
    pub sources: Vec<Source>,
    /// When set, a parameter absent from every source is an error instead of initialised.
    pub strict: bool,
}

impl InitBackend {
    fn lookup(&self, shape: &Shape, name: &str, dtype: DType, dev: &Device) -> Result<Option<Tensor>> {
        for src in &self.sources {
            if let Some(theirs) = (src.map)(name) {
                if src.vb.contains_tensor(&theirs) {
                    let t = src.vb.get(shape.clone(), &theirs)?;
                    return Ok(Some(t.to_device(dev)?.to_dtype(dtype)?));
                }
            }
        }
        Ok(None)
    }
}

impl SimpleBackend for InitBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        if let Some(var) = self.varmap.data().lock().unwrap().get(name) {
            if var.shape() != &s {
                candle_core::bail!("shape mismatch for {name}: {:?} vs {:?}", var.shape(), s);
            }
            return Ok(var.as_tensor().clone());
        }
        match self.lookup(&s, name, dtype, dev)? {
            Some(t) => {
                let var = Var::from_tensor(&t)?;
                let out = var.as_tensor().clone();
                self.varmap.data().lock().unwrap().insert(name.to_string(), var);
                Ok(out)
            }
            None if self.strict => Err(candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }),
            None => self.varmap.get(s, name, h, dtype, dev),
        }
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("parameter `{name}` requested without a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap.data().lock().unwrap().contains_key(name)
            || self
                .sources
                .iter()
                .any(|s| (s.map)(name).is_some_and(|n| s.vb.contains_tensor(&n)))
    }
}

/// Serves frozen tensors from `inner` (or an initialiser when `inner` is `None`), detached,
/// and records every tensor it hands out.
pub struct RecordingBackend {
    pub inner: Option<VarBuilder<'static>>,
    pub record: Arc<Mutex<HashMap<String, Tensor>>>,
}

impl SimpleBackend for RecordingBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t = match &self.inner {
            Some(vb) => vb.get_with_hints_dtype(s, name, h, dtype)?.to_device(dev)?,
            None => h.var(s, dtype, dev)?.as_detached_tensor(),
        };
        self.record.lock().unwrap().insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        match &self.inner {
            Some(vb) => vb.get_unchecked_dtype(name, dtype)?.to_device(dev),
            None => candle_core::bail!("no tensor `{name}` without a source"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.as_ref().is_some_and(|vb| vb.contains_tensor(name))
    }
}
