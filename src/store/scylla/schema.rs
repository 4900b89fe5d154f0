//! The schema of the ScyllaDB store, from `schemas/cql/billstream.cql`
//! (the one readable copy, embedded at build time), rendered for a
//! keyspace and replication and split into statements for
//! `billstream migrate`.

use crate::config::Replication;

/// The CQL file, with `{{keyspace}}` and `{{replication}}` placeholders.
pub const SCHEMA_CQL: &str = include_str!("../../../schemas/cql/billstream.cql");

/// The tables the store uses, in file order.
#[cfg(test)]
const TABLES: [&str; 8] = [
    "accounts",
    "journal",
    "invoices",
    "dedup",
    "timers",
    "timer_buckets",
    "partition_accounts",
    "partition_owners",
];

/// The schema text for `keyspace` (a valid CQL identifier, checked by the
/// configuration) with `replication`.
pub fn render(keyspace: &str, replication: &Replication) -> String {
    SCHEMA_CQL
        .replace("{{keyspace}}", keyspace)
        .replace("{{replication}}", &replication.cql_map())
}

/// The statements of a CQL text: `--` comments removed (outside quotes),
/// split at `;` (outside quotes), blank ones dropped, each trimmed and
/// without its `;`.
pub fn statements(cql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_quote = false;
    for line in cql.lines() {
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\'' => {
                    in_quote = !in_quote;
                    current.push(c);
                }
                '-' if !in_quote && chars.peek() == Some(&'-') => break,
                ';' if !in_quote => {
                    push_statement(&mut out, &mut current);
                }
                _ => current.push(c),
            }
        }
        current.push('\n');
    }
    push_statement(&mut out, &mut current);
    out
}

fn push_statement(out: &mut Vec<String>, current: &mut String) {
    let text: Vec<&str> = current
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    if !text.is_empty() {
        out.push(text.join("\n"));
    }
    current.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_renders_into_idempotent_statements_for_every_table() {
        let cql = render("bs_test", &Replication::Simple { factor: 1 });
        assert!(!cql.contains("{{"), "a placeholder is left: {cql}");
        let statements = statements(&cql);
        assert_eq!(statements.len(), 1 + TABLES.len());
        assert!(statements[0].starts_with("CREATE KEYSPACE IF NOT EXISTS bs_test"));
        assert!(statements[0].contains("{'class': 'SimpleStrategy', 'replication_factor': 1}"));
        for (statement, table) in statements[1..].iter().zip(TABLES) {
            assert!(
                statement.starts_with(&format!("CREATE TABLE IF NOT EXISTS bs_test.{table} (")),
                "{statement}"
            );
        }
        for statement in &statements {
            assert!(!statement.contains("--"), "comment left in {statement}");
            assert!(!statement.contains(';'));
        }
    }

    #[test]
    fn schema_deletes_and_drops_nothing() {
        let upper = SCHEMA_CQL.to_ascii_uppercase();
        for statement in statements(&upper) {
            assert!(
                statement.starts_with("CREATE ") && statement.contains(" IF NOT EXISTS "),
                "not an idempotent CREATE: {statement}"
            );
        }
    }

    #[test]
    fn split_respects_quotes_and_comments() {
        let text = "-- header; with a semicolon\nCREATE TABLE t (a int) -- trailing\n  WITH comment = 'a; b -- c';\n\n;\nSELECT 1;";
        assert_eq!(
            statements(text),
            [
                "CREATE TABLE t (a int)\n  WITH comment = 'a; b -- c'",
                "SELECT 1"
            ]
        );
    }
}
