//! Compression passes, one file per technique. Each technique is one config type that
//! implements [`pass::Technique`]: recipes read it (serde), the verbs take it as flags
//! (clap), and the runner ([`crate::pipeline::run`]) applies any list of them.
//!
//! Adding a technique is one new file here and one line in the [`passes!`] registry
//! below (see `docs/adding-a-technique.md`; [`random_prune`] is the worked example).

pub mod code;
pub mod distill;
pub mod hashed;
pub mod multitask;
pub mod pass;
pub mod prune;
pub mod quantize;
pub mod random_prune;
pub mod select;
pub mod share;
pub mod smooth;
pub mod trim;

use pass::{ModelKind, Technique};

/// The registry: each line is a recipe's `type = "…"` (the variant in snake_case) and
/// the config type that implements the technique.
macro_rules! passes {
    ($($variant:ident => $config:ty,)*) => {
        /// One pass of a recipe: the config of one technique, tagged by `type`.
        #[derive(serde::Deserialize, serde::Serialize, Clone, Debug, PartialEq)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum PassConfig {
            $($variant($config),)*
        }

        impl PassConfig {
            /// The technique behind this pass.
            pub fn technique(&self) -> &dyn Technique {
                match self {
                    $(PassConfig::$variant(c) => c,)*
                }
            }
        }
    };
}

passes! {
    Prune => prune::Prune,
    RandomPrune => random_prune::RandomPrune,
    PruneRows => prune::PruneRows,
    Share => share::Share,
    Hash => hashed::Hash,
    Trim => trim::Trim,
    Distill => distill::Distill,
    Code => code::Code,
    Int4 => quantize::Int4,
    Quantize => quantize::Quantize,
    ShareTasks => multitask::ShareTasks,
}

impl PassConfig {
    /// The stage name in reports (before the pass ran).
    pub fn stage_name(&self) -> String {
        self.technique().stage_name()
    }
}

/// The message for a pass that does not run on `kind`.
fn not_available(kind: ModelKind, stage: &str) -> String {
    match kind {
        ModelKind::Embedder => format!("pass '{stage}' is not available for hf_dir models yet (they run prune_rows, trim, int4, quantize, code)"),
        ModelKind::Tasks => "a recipe with [[task]] tables runs one or more share_tasks passes and no other pass".into(),
        ModelKind::Classifier => format!("pass '{stage}' does not run on classifier recipes"),
    }
}

/// The message for an embedder-only pass on another kind of model.
fn embedding_only(stage: &str) -> String {
    format!("pass '{stage}' runs in embedding recipes only ([model] hf_dir) for now")
}

fn default_fine_tune() -> usize {
    3
}

fn default_one() -> usize {
    1
}

fn default_calibration() -> usize {
    1000
}

fn default_text_calibration() -> usize {
    128
}
