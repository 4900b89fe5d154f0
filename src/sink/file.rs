//! The file sink: one JSON-lines file per output topic in a folder, for
//! the demo, `simulate` and single-machine use. In shadow mode the files
//! are named after the shadow topics (`shadow.billing.invoices.v1.jsonl`)
//! and there is none for charges and notifications: those are withheld.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{publishes, Sink};
use crate::config::RunMode;
use crate::contracts::{OutputRecord, OutputTopic};

pub struct FileSink {
    dir: PathBuf,
    mode: RunMode,
    files: HashMap<OutputTopic, BufWriter<File>>,
    pub written: HashMap<OutputTopic, u64>,
    /// Records a shadow did not publish, by topic.
    pub withheld: HashMap<OutputTopic, u64>,
}

impl FileSink {
    /// Create `dir` and one empty `<topic>.jsonl` per output topic.
    pub fn create(dir: &Path) -> std::io::Result<FileSink> {
        FileSink::create_in(dir, RunMode::Live)
    }

    /// As `create`, for an instance in `mode`: a shadow's files are
    /// `<shadow prefix><topic>.jsonl`, for the topics it publishes.
    pub fn create_in(dir: &Path, mode: RunMode) -> std::io::Result<FileSink> {
        std::fs::create_dir_all(dir)?;
        let mut files = HashMap::new();
        for topic in OutputTopic::ALL {
            if !publishes(&mode, topic) {
                continue;
            }
            let f = File::create(dir.join(FileSink::file_name(&mode, topic)))?;
            files.insert(topic, BufWriter::new(f));
        }
        Ok(FileSink {
            dir: dir.to_path_buf(),
            mode,
            files,
            written: HashMap::new(),
            withheld: HashMap::new(),
        })
    }

    /// The file of `topic` in `mode`.
    pub fn file_name(mode: &RunMode, topic: OutputTopic) -> String {
        match mode {
            RunMode::Live => format!("{}.jsonl", topic.default_name()),
            RunMode::Shadow { prefix } => format!("{prefix}{}.jsonl", topic.default_name()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.files.values_mut().try_for_each(|f| f.flush())
    }
}

impl Sink for FileSink {
    fn publish(&mut self, records: &[OutputRecord]) -> std::io::Result<()> {
        for r in records {
            if !publishes(&self.mode, r.topic) {
                *self.withheld.entry(r.topic).or_default() += 1;
                continue;
            }
            let f = self.files.get_mut(&r.topic).expect("a file per topic");
            serde_json::to_writer(&mut *f, &r.json)?;
            f.write_all(b"\n")?;
            *self.written.entry(r.topic).or_default() += 1;
        }
        Ok(())
    }
}
