//! The connection log as tools read it: every record is checked against
//! the documented schema, `docs/connection-log.schema.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use appliance::connlog::ConnectionLog;
use appliance::writer::Writer;
use serde_json::Value;

/// A connection log written by a writer thread of its own, as the data
/// plane's is; read back once the writer caught up.
pub struct LogFile {
    pub path: PathBuf,
    /// The workers' handle (give it to the engine).
    pub log: Arc<ConnectionLog>,
    writer: Writer,
}

impl LogFile {
    pub fn open(path: PathBuf) -> LogFile {
        let writer = Writer::start().unwrap();
        let log = Arc::new(ConnectionLog::open(&path, writer.handle()).unwrap());
        LogFile { path, log, writer }
    }

    /// The writer thread's handle (for a reloader).
    pub fn writer(&self) -> &appliance::writer::WriterHandle {
        self.writer.handle()
    }

    /// Every record queued so far, once written (see [`records`]).
    pub fn records(&self) -> Vec<Value> {
        self.writer.handle().flush();
        records(&self.path)
    }

    /// The text of the file once the writer caught up.
    pub fn text(&self) -> String {
        self.writer.handle().flush();
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }
}

/// The schema's validator, with `format` (date-time, IP addresses) checked.
pub fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(include_str!("../../../../docs/connection-log.schema.json")).unwrap();
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

/// Panics naming every way `record` departs from the schema.
pub fn assert_matches_schema(validator: &jsonschema::Validator, record: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(record)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect();
    assert!(errors.is_empty(), "not in the schema: {errors:?} in {record}");
}

/// Every record of the log at `path` (none if it does not exist yet), each
/// checked against the schema.
pub fn records(path: &Path) -> Vec<Value> {
    let validator = validator();
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let record = serde_json::from_str(line).unwrap();
            assert_matches_schema(&validator, &record);
            record
        })
        .collect()
}
