//! The file sink: one JSON-lines file per output topic in a folder, for
//! the demo, `simulate` and single-machine use.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::Sink;
use crate::contracts::{OutputRecord, OutputTopic};

pub struct FileSink {
    dir: PathBuf,
    files: HashMap<OutputTopic, BufWriter<File>>,
    pub written: HashMap<OutputTopic, u64>,
}

impl FileSink {
    /// Create `dir` and one empty `<topic>.jsonl` per output topic.
    pub fn create(dir: &Path) -> std::io::Result<FileSink> {
        std::fs::create_dir_all(dir)?;
        let mut files = HashMap::new();
        for topic in OutputTopic::ALL {
            let f = File::create(dir.join(format!("{}.jsonl", topic.default_name())))?;
            files.insert(topic, BufWriter::new(f));
        }
        Ok(FileSink {
            dir: dir.to_path_buf(),
            files,
            written: HashMap::new(),
        })
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
            let f = self.files.get_mut(&r.topic).expect("a file per topic");
            serde_json::to_writer(&mut *f, &r.json)?;
            f.write_all(b"\n")?;
            *self.written.entry(r.topic).or_default() += 1;
        }
        Ok(())
    }
}
