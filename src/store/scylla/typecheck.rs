//! Without a database, checks that every statement of `statements.rs`
//! binds values and reads rows of the CQL types that
//! `schemas/cql/billstream.cql` declares: the column types are parsed from
//! the schema file, the bind markers and selected columns from the
//! statement texts, and the driver's own serializer and row type check run
//! against them (the same checks it runs against a live server's metadata).

use std::collections::{BTreeMap, HashMap};

use scylla::deserialize::row::DeserializeRow;
use scylla::frame::response::result::{
    CollectionType, ColumnSpec, ColumnType, NativeType, TableSpec,
};
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::writers::RowWriter;
use scylla::value::{CqlTimestamp, Row};

use super::plan::{plan_write, AccountMeta, Mutation};
use super::rows::{AccountRow, DedupRow, JournalRow};
use super::schema::{render, statements as split};
use super::statements::texts;
use crate::config::Replication;
use crate::store::{AccountWrite, DedupRecord, InputOffset, InvoiceRecord, JournalRecord};

const KS: &str = "ks";

/// A CQL type as written in the schema file.
fn parse_type(text: &str) -> ColumnType<'static> {
    let text = text.trim();
    if let Some(inner) = text
        .strip_prefix("frozen<")
        .and_then(|t| t.strip_suffix('>'))
    {
        return match parse_type(inner) {
            ColumnType::Collection { typ, .. } => ColumnType::Collection { frozen: true, typ },
            other => other,
        };
    }
    let generic = |prefix: &str| {
        text.strip_prefix(prefix)
            .and_then(|t| t.strip_suffix('>'))
            .map(split_top_level)
    };
    if let Some(args) = generic("map<") {
        return ColumnType::Collection {
            frozen: false,
            typ: CollectionType::Map(
                Box::new(parse_type(&args[0])),
                Box::new(parse_type(&args[1])),
            ),
        };
    }
    if let Some(args) = generic("list<") {
        return ColumnType::Collection {
            frozen: false,
            typ: CollectionType::List(Box::new(parse_type(&args[0]))),
        };
    }
    if let Some(args) = generic("tuple<") {
        return ColumnType::Tuple(args.iter().map(|a| parse_type(a)).collect());
    }
    ColumnType::Native(match text {
        "int" => NativeType::Int,
        "bigint" => NativeType::BigInt,
        "blob" => NativeType::Blob,
        "text" => NativeType::Text,
        "timestamp" => NativeType::Timestamp,
        "boolean" => NativeType::Boolean,
        other => panic!("type {other:?} is not known to this test"),
    })
}

/// Splits `a, map<b, c>, d` at top-level commas.
fn split_top_level(text: &str) -> Vec<String> {
    let (mut parts, mut depth, mut current) = (Vec::new(), 0, String::new());
    for c in text.chars() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    parts.push(current);
    parts.into_iter().map(|p| p.trim().to_string()).collect()
}

/// table → column → type, from the schema file.
fn schema_columns() -> HashMap<String, HashMap<String, ColumnType<'static>>> {
    let mut tables = HashMap::new();
    for statement in split(&render(KS, &Replication::Simple { factor: 1 }, None)) {
        let Some(rest) = statement.strip_prefix(&format!("CREATE TABLE IF NOT EXISTS {KS}."))
        else {
            continue;
        };
        let name = rest.split_whitespace().next().unwrap().to_string();
        let mut columns = HashMap::new();
        for line in statement.lines().skip(1) {
            let line = line.trim().trim_end_matches(',');
            if line.starts_with(')') {
                break;
            }
            if line.starts_with("PRIMARY KEY") || line.is_empty() {
                continue;
            }
            let (column, typ) = line.split_once(' ').unwrap();
            let typ = typ
                .trim()
                .trim_end_matches("PRIMARY KEY")
                .trim()
                .trim_end_matches("static")
                .trim();
            columns.insert(column.to_string(), parse_type(typ));
        }
        tables.insert(name, columns);
    }
    tables
}

fn bigint() -> ColumnType<'static> {
    ColumnType::Native(NativeType::BigInt)
}

fn spec(table: &str, name: &str, typ: ColumnType<'static>) -> ColumnSpec<'static> {
    ColumnSpec::owned(
        name.to_string(),
        typ,
        TableSpec::owned(KS.to_string(), table.to_string()),
    )
}

/// The table a statement works on.
fn table_of(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| ["FROM", "INTO", "UPDATE"].contains(w))
        .expect("statement names a table");
    words[at + 1].trim_start_matches("ks.").to_string()
}

/// The bind markers of a statement as column specs.
fn marker_specs(
    text: &str,
    tables: &HashMap<String, HashMap<String, ColumnType<'static>>>,
) -> Vec<ColumnSpec<'static>> {
    let table = table_of(text);
    let columns = &tables[&table];
    let insert_columns: Vec<String> = text
        .split_once('(')
        .filter(|_| text.starts_with("INSERT"))
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(list, _)| list.split(',').map(|c| c.trim().to_string()).collect())
        .unwrap_or_default();
    let mut specs = Vec::new();
    let mut values_index = 0;
    for (at, _) in text.match_indices('?') {
        let before = text[..at].trim_end();
        let typ_of = |name: &str| {
            columns
                .get(name)
                .cloned()
                .unwrap_or_else(|| panic!("{table}.{name} is not in the schema"))
        };
        let spec_for = if before.ends_with("TIMESTAMP") {
            spec(&table, "[timestamp]", bigint())
        } else if before.ends_with("TTL") {
            spec(&table, "[ttl]", ColumnType::Native(NativeType::Int))
        } else if before.ends_with("LIMIT") {
            spec(&table, "[limit]", ColumnType::Native(NativeType::Int))
        } else if before.ends_with('=') || before.ends_with(">=") || before.ends_with("<=") {
            let name = before
                .trim_end_matches(['=', '>', '<'])
                .split_whitespace()
                .last()
                .unwrap();
            spec(&table, name, typ_of(name))
        } else {
            let name = insert_columns[values_index].clone();
            values_index += 1;
            spec(&table, &name, typ_of(&name))
        };
        specs.push(spec_for);
    }
    specs
}

/// The selected columns of a SELECT as column specs.
fn result_specs(
    text: &str,
    tables: &HashMap<String, HashMap<String, ColumnType<'static>>>,
) -> Vec<ColumnSpec<'static>> {
    let table = table_of(text);
    let list = text
        .strip_prefix("SELECT ")
        .and_then(|t| t.split_once(" FROM "))
        .map(|(l, _)| l.trim_start_matches("DISTINCT "))
        .unwrap();
    list.split(',')
        .map(|c| c.trim())
        .map(|c| {
            if c.starts_with("WRITETIME(") {
                spec(&table, c, bigint())
            } else {
                spec(&table, c, tables[&table][c].clone())
            }
        })
        .collect()
}

struct Checker {
    texts: BTreeMap<&'static str, String>,
    tables: HashMap<String, HashMap<String, ColumnType<'static>>>,
}

impl Checker {
    fn new() -> Self {
        Checker {
            texts: texts(KS).into_iter().collect(),
            tables: schema_columns(),
        }
    }

    fn binds(&self, name: &str, values: &impl SerializeRow) {
        let specs = marker_specs(&self.texts[name], &self.tables);
        let mut buf = Vec::new();
        values
            .serialize(
                &RowSerializationContext::from_specs(&specs),
                &mut RowWriter::new(&mut buf),
            )
            .unwrap_or_else(|e| panic!("{name}: values do not fit the schema: {e}"));
    }

    fn reads<R: for<'f, 'm> DeserializeRow<'f, 'm>>(&self, name: &str) {
        let specs = result_specs(&self.texts[name], &self.tables);
        R::type_check(&specs)
            .unwrap_or_else(|e| panic!("{name}: row type does not fit the schema: {e}"));
    }
}

#[test]
fn every_mutation_binds_the_schema_types() {
    let checker = Checker::new();
    let write = AccountWrite {
        account_id: "acc".into(),
        partition: 1,
        epoch: 3,
        snapshot: b"{}".to_vec(),
        journal: vec![JournalRecord {
            seq: 1,
            at: 5,
            bytes: b"e".to_vec(),
        }],
        invoices: vec![InvoiceRecord {
            invoice_id: "inv".into(),
            bytes: b"d".to_vec(),
        }],
        dedup: vec![DedupRecord {
            key: 9,
            fingerprint: 8,
            seen_at: 7,
        }],
        next_timer: Some(100),
        offsets: vec![InputOffset {
            topic: "usage".into(),
            partition: 1,
            next: 2,
        }],
        published_upto: Some(1),
        dead_letters: vec![crate::store::DeadLetterRecord {
            id: "d".into(),
            bytes: b"letter".to_vec(),
        }],
        dead_letters_published: vec!["c".into()],
    };
    let mut prev = AccountMeta {
        exists: true,
        partition: 0,
        next_timer: Some(50),
        ..AccountMeta::default()
    };
    prev.offsets.insert(("plans".into(), 0), 4);
    let plan = plan_write(&prev, &write, 60, 0, |_, _| false).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for m in &plan.mutations {
        let name = match m {
            Mutation::Account { .. } => "update_account",
            Mutation::Journal { .. } => "insert_journal",
            Mutation::Invoice { .. } => "insert_invoice",
            Mutation::Dedup { .. } => "insert_dedup",
            Mutation::TimerInsert { .. } => "insert_timer",
            Mutation::TimerDelete { .. } => "delete_timer",
            Mutation::BucketInsert { .. } => "insert_bucket",
            Mutation::PartitionAccountInsert { .. } => "insert_partition_account",
            Mutation::PartitionAccountDelete { .. } => "delete_partition_account",
        };
        checker.binds(name, m);
        seen.insert(name);
    }
    assert_eq!(
        seen.len(),
        9,
        "every kind of mutation was checked: {seen:?}"
    );
    // An account row without timer and offsets binds too (nulls, empty map).
    let bare_write = AccountWrite {
        next_timer: None,
        offsets: vec![],
        dead_letters: vec![],
        ..write.clone()
    };
    let bare = plan_write(&AccountMeta::default(), &bare_write, 60, 0, |_, _| true).unwrap();
    checker.binds("update_account", &bare.mutations[0]);
}

#[test]
fn every_read_binds_and_maps_the_schema_types() {
    let c = Checker::new();
    // The values and row types `store.rs` uses, statement by statement.
    c.binds("select_owner", &(1i32,));
    c.reads::<(Option<i64>,)>("select_owner");
    c.binds("select_owner_serial", &(1i32,));
    c.binds("claim_first", &(1i32, 1i64, "owner", CqlTimestamp(0)));
    c.binds("claim_next", &(2i64, "owner", CqlTimestamp(0), 1i32, 1i64));
    c.binds("select_account", &("acc",));
    c.reads::<AccountRow>("select_account");
    c.binds("select_timer_of", &("acc",));
    c.reads::<(Option<i32>, Option<i64>)>("select_timer_of");
    c.binds("select_head", &("acc",));
    c.reads::<(Option<i64>,)>("select_head");
    c.binds("select_journal", &("acc", 0i64, 1i64, 5i64, 10i32));
    c.reads::<JournalRow>("select_journal");
    c.binds("update_published", &(1i64, 2i64, "acc"));
    c.binds("select_invoice", &("acc", "inv"));
    c.reads::<(Option<Vec<u8>>,)>("select_invoice");
    c.binds("select_invoices", &("acc",));
    c.reads::<(String, Option<Vec<u8>>)>("select_invoices");
    c.binds("select_dedup", &("acc", 0i64));
    c.reads::<DedupRow>("select_dedup");
    c.binds("select_timers", &(1i32, 0i64, 5i64));
    c.reads::<(i64, String)>("select_timers");
    c.binds("select_buckets", &(1i32, i64::MIN, 0i64));
    c.reads::<(i64,)>("select_buckets");
    c.binds("select_partition_accounts", &(1i32,));
    c.reads::<(String,)>("select_partition_accounts");
    c.reads::<(String,)>("select_all_accounts");
    // The claim's answer is read untyped ([applied] first).
    c.reads::<Row>("select_owner");
}

#[test]
fn a_wrong_type_is_caught_by_this_check() {
    let c = Checker::new();
    let specs = marker_specs(&c.texts["select_journal"], &c.tables);
    let mut buf = Vec::new();
    // seq is a bigint: an i32 must not pass.
    let wrong = ("acc", 0i64, 1i32, 5i64, 10i32);
    assert!(wrong
        .serialize(
            &RowSerializationContext::from_specs(&specs),
            &mut RowWriter::new(&mut buf)
        )
        .is_err());
}
