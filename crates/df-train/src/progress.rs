//! Progress and metrics reporting of the stage loop.
//!
//! The loop hands every optimiser step and every epoch to a [`Reporter`] (see
//! [`crate::Hooks::reporter`]); library users plug in their own. [`ProgressReporter`] is the
//! default one: an `indicatif` progress bar (steps, loss, lr, items/s, ETA) when stderr is a
//! terminal, plain log lines otherwise, and a summary table of every stage it saw.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::trainer::{Stage, TrainSummary};

/// What a [`crate::train`] call is about to do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunInfo {
    /// Stage being trained.
    pub stage: Stage,
    /// Passes over the data.
    pub epochs: usize,
    /// Optimiser steps per epoch.
    pub steps_per_epoch: usize,
    /// Optimiser steps of the whole run.
    pub total_steps: usize,
    /// Steps already done when this call starts (non-zero when resuming).
    pub start_step: usize,
    /// Training items (triplets; images for stage 0).
    pub items: usize,
    /// Items per micro-batch.
    pub batch_size: usize,
}

/// One optimiser step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepMetrics {
    /// Stage being trained.
    pub stage: Stage,
    /// Epoch (0-based).
    pub epoch: usize,
    /// Optimiser steps done, this one included.
    pub step: usize,
    /// Optimiser steps of the whole run.
    pub total_steps: usize,
    /// Loss of the step's last micro-batch.
    pub loss: f64,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Training items per second over this epoch so far (this call only).
    pub items_per_s: f64,
    /// Seconds since this call started.
    pub elapsed_s: f64,
    /// Named loss parts of the model, if any.
    pub parts: Vec<(String, f32)>,
}

impl StepMetrics {
    /// The JSONL line: `{"kind": "step", "stage", "epoch", "step", "total_steps", "loss", "lr",
    /// "grad_norm", "items_per_s", "elapsed_s", <parts>...}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut line = serde_json::json!({
            "kind": "step", "stage": self.stage, "epoch": self.epoch, "step": self.step,
            "total_steps": self.total_steps, "loss": self.loss, "lr": self.lr,
            "grad_norm": self.grad_norm, "items_per_s": self.items_per_s, "elapsed_s": self.elapsed_s,
        });
        for (k, v) in &self.parts {
            line[k] = serde_json::json!(v);
        }
        line
    }
}

/// One finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochMetrics {
    /// Stage being trained.
    pub stage: Stage,
    /// Epoch (0-based).
    pub epoch: usize,
    /// Optimiser steps done at its end.
    pub global_step: usize,
    /// Mean loss over the epoch's micro-batches run in this call.
    pub loss: f64,
    /// Validation value (higher is better), when validated.
    pub val: Option<f64>,
    /// Best validation value so far.
    pub best: Option<f64>,
    /// Whether this epoch became the best checkpoint.
    pub is_best: bool,
    /// Wall-clock seconds of the epoch.
    pub seconds: f64,
    /// Training items per second over the epoch.
    pub items_per_s: f64,
}

impl EpochMetrics {
    /// The JSONL line: `{"kind": "epoch", ...}` with every field.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        v["kind"] = serde_json::json!("epoch");
        v
    }
}

/// Receives the loop's progress. Every method has an empty default.
pub trait Reporter {
    /// A [`crate::train`] call starts.
    fn start(&self, _info: &RunInfo) {}
    /// An optimiser step is done.
    fn step(&self, _m: &StepMetrics) {}
    /// An epoch is done (after validation and checkpointing).
    fn epoch(&self, _m: &EpochMetrics) {}
    /// The call returns (also when `max_steps` stopped it early).
    fn finish(&self, _summary: &TrainSummary) {}
}

type Sink = Box<dyn Fn(&str) + Send + Sync>;

/// Progress bar or plain lines, plus a summary table of the stages run.
pub struct ProgressReporter {
    bar: bool,
    interval: Duration,
    sink: Sink,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    bar: Option<ProgressBar>,
    info: Option<RunInfo>,
    started: Option<Instant>,
    last_line: Option<Instant>,
    runs: Vec<(String, TrainSummary)>,
}

impl Default for ProgressReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressReporter {
    /// A bar when stderr is a terminal, plain lines (at most one per 10 s) otherwise.
    pub fn new() -> Self {
        Self {
            bar: std::io::stderr().is_terminal(),
            interval: Duration::from_secs(10),
            sink: Box::new(|l| eprintln!("{l}")),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Forces the bar on or off.
    pub fn with_bar(mut self, bar: bool) -> Self {
        self.bar = bar;
        self
    }

    /// The least time between two plain step lines (the first and last step always print).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Where plain lines (and, with a bar, epoch lines) go; stderr by default.
    pub fn with_sink(mut self, sink: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.sink = Box::new(sink);
        self
    }

    /// Whether a bar is drawn.
    pub fn uses_bar(&self) -> bool {
        self.bar
    }

    /// The runs finished so far, each named by its stage (`"stage2"`, ...).
    pub fn runs(&self) -> Vec<(String, TrainSummary)> {
        self.lock().runs.clone()
    }

    /// The summary table of the runs finished so far (see [`summary_table`]).
    pub fn summary_table(&self) -> String {
        let runs = self.runs();
        summary_table(&runs.iter().map(|(n, s)| (n.as_str(), s)).collect::<Vec<_>>())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere must not silence the reporter.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn line(&self, inner: &Inner, text: &str) {
        match &inner.bar {
            Some(bar) => bar.println(text),
            None => (self.sink)(text),
        }
    }
}

/// `1h02m`, `3m05s`, `12s`.
pub fn format_duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "?".into();
    }
    let s = secs.round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

/// The short name of a stage in logs and tables.
pub fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Itc => "stage0",
        Stage::Di => "stage1",
        Stage::Joint => "stage2",
        Stage::Compositor => "stage3",
    }
}

impl Reporter for ProgressReporter {
    fn start(&self, info: &RunInfo) {
        let mut inner = self.lock();
        if let Some(old) = inner.bar.take() {
            old.finish_and_clear();
        }
        let now = Instant::now();
        inner.started = Some(now);
        inner.last_line = None;
        inner.info = Some(info.clone());
        let head = format!(
            "{}: {} items, batch {}, {} epochs x {} steps{}",
            stage_name(info.stage),
            info.items,
            info.batch_size,
            info.epochs,
            info.steps_per_epoch,
            if info.start_step > 0 {
                format!(", resuming at step {}", info.start_step)
            } else {
                String::new()
            }
        );
        (self.sink)(&head);
        if self.bar {
            let bar =
                ProgressBar::with_draw_target(Some(info.total_steps as u64), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:28}] {pos}/{len} {msg} [{elapsed_precise} ETA {eta}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(stage_name(info.stage));
            bar.set_position(info.start_step as u64);
            bar.reset_eta();
            inner.bar = Some(bar);
        }
    }

    fn step(&self, m: &StepMetrics) {
        let mut inner = self.lock();
        let msg = format!(
            "ep {}/{} loss {:.4} lr {:.2e} {:.1} items/s",
            m.epoch + 1,
            inner.info.as_ref().map_or(0, |i| i.epochs),
            m.loss,
            m.lr,
            m.items_per_s
        );
        if let Some(bar) = &inner.bar {
            bar.set_position(m.step as u64);
            bar.set_message(msg);
            return;
        }
        let now = Instant::now();
        let first = inner.last_line.is_none();
        let due = inner.last_line.is_none_or(|t| now - t >= self.interval);
        if !(first || due || m.step == m.total_steps) {
            return;
        }
        inner.last_line = Some(now);
        let start = inner.info.as_ref().map_or(0, |i| i.start_step);
        let done = m.step.saturating_sub(start).max(1) as f64;
        let eta = m.elapsed_s / done * m.total_steps.saturating_sub(m.step) as f64;
        let text = format!(
            "{} step {}/{} {msg} ETA {}",
            stage_name(m.stage),
            m.step,
            m.total_steps,
            format_duration(eta)
        );
        self.line(&inner, &text);
    }

    fn epoch(&self, m: &EpochMetrics) {
        let inner = self.lock();
        let val = match (m.val, m.best) {
            (Some(v), Some(b)) => format!(
                " val {v:.4} (best {b:.4}{})",
                if m.is_best { ", saved" } else { "" }
            ),
            _ => String::new(),
        };
        let text = format!(
            "{} epoch {} done: loss {:.4}{val}, {}, {:.1} items/s",
            stage_name(m.stage),
            m.epoch + 1,
            m.loss,
            format_duration(m.seconds),
            m.items_per_s
        );
        self.line(&inner, &text);
    }

    fn finish(&self, summary: &TrainSummary) {
        let mut inner = self.lock();
        if let Some(bar) = inner.bar.take() {
            bar.finish_and_clear();
        }
        inner
            .runs
            .push((stage_name(summary.stage).to_string(), summary.clone()));
    }
}

/// A plain-text table with one row per run: epochs, steps, first and last epoch loss, best
/// validation value, wall time and throughput.
pub fn summary_table(runs: &[(&str, &TrainSummary)]) -> String {
    let mut out = format!(
        "{:<10} {:>6} {:>7} {:>10} {:>10} {:>9} {:>9} {:>9}\n",
        "run", "epochs", "steps", "first loss", "last loss", "best val", "time", "items/s"
    );
    for (name, s) in runs {
        // A run stopped before its first epoch ended has no epoch figures: "-".
        let first = s
            .epochs
            .first()
            .map_or("-".to_string(), |e| format!("{:.4}", e.loss));
        let secs: f64 = s.epochs.iter().map(|e| e.seconds).sum();
        let speed = s
            .epochs
            .last()
            .map_or("-".to_string(), |e| format!("{:.1}", e.items_per_s));
        let best = s.state.best.map_or("-".to_string(), |b| format!("{b:.4}"));
        out.push_str(&format!(
            "{:<10} {:>6} {:>7} {:>10} {:>10.4} {:>9} {:>9} {:>9}{}\n",
            name,
            s.state.epoch,
            s.state.global_step,
            first,
            s.last_epoch_loss,
            best,
            format_duration(secs.max(s.seconds)),
            speed,
            if s.stopped_early { "  (stopped early)" } else { "" }
        ));
    }
    out
}
