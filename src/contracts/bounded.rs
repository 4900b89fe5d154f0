//! Outputs within the broker's record limit.
//! (Stub: filled in once the tests are seen failing.)

use super::catalog::{Catalog, SchemaIds};
use super::errors::EncodeError;
use super::outputs::OutputRecord;

impl Catalog {
    pub fn encode_output_bounded(
        &self,
        record: &OutputRecord,
        _max_bytes: usize,
    ) -> Result<(Vec<u8>, Option<OutputRecord>), EncodeError> {
        Ok((self.encode_output(record)?, None))
    }

    pub fn encode_output_bounded_with(
        &self,
        record: &OutputRecord,
        ids: &SchemaIds,
        _max_bytes: usize,
    ) -> Result<(Vec<u8>, Option<OutputRecord>), EncodeError> {
        Ok((self.encode_output_with(record, ids)?, None))
    }
}
