//! The schema of the ScyllaDB store, from `schemas/cql/billstream.cql`
//! (the one readable copy, embedded at build time), rendered for a
//! keyspace, replication and backend and split into statements for
//! `billstream migrate`.

use crate::config::Replication;

/// The CQL file, with `{{keyspace}}`, `{{replication}}` and `{{backend}}`
/// placeholders.
pub const SCHEMA_CQL: &str = include_str!("../../../schemas/cql/billstream.cql");

/// The CQL server `billstream migrate` talks to, as it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// Apache Cassandra (no `system.versions`); its release version.
    Cassandra { release: String },
    /// ScyllaDB; the version `system.versions` gives.
    Scylla { version: String },
}

impl Backend {
    /// Whether a keyspace with `replication` would get tablets here unless
    /// told not to: ScyllaDB 6.0 and later (and the 2024.2 and later
    /// releases numbered by year), NetworkTopologyStrategy only.
    pub fn tablets_by_default(&self, replication: &Replication) -> bool {
        let Backend::Scylla { version } = self else {
            return false;
        };
        if matches!(replication, Replication::Simple { .. }) {
            return false;
        }
        let mut parts = version
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse::<u32>().ok());
        let major = parts.next().flatten().unwrap_or(0);
        let minor = parts.next().flatten().unwrap_or(0);
        match major {
            // A version we cannot read: a recent one is likelier than not.
            0 => true,
            1..=5 => false,
            2024 => minor >= 2,
            2000..=2023 => false,
            _ => true,
        }
    }

    /// What goes in place of `{{backend}}` (after `durable_writes = true`).
    fn keyspace_options(&self, replication: &Replication) -> &'static str {
        if self.tablets_by_default(replication) {
            "\n  AND tablets = {'enabled': false}"
        } else {
            ""
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Cassandra { release } => write!(f, "Apache Cassandra {release}"),
            Backend::Scylla { version } => write!(f, "ScyllaDB {version}"),
        }
    }
}

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
/// configuration) with `replication` on `backend`; `None` (`migrate
/// --print`, no server asked) leaves the ScyllaDB option as a comment.
pub fn render(keyspace: &str, replication: &Replication, backend: Option<&Backend>) -> String {
    let options = match backend {
        Some(backend) => backend.keyspace_options(replication),
        // On a line of its own, so the `;` after it is not commented out.
        None => {
            "\n  -- on ScyllaDB 6+ with NetworkTopologyStrategy: AND tablets = {'enabled': false}\n"
        }
    };
    SCHEMA_CQL
        .replace("{{keyspace}}", keyspace)
        .replace("{{replication}}", &replication.cql_map())
        .replace("{{backend}}", options)
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

/// The columns of one table of the schema, in file order: (name, CQL type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableColumns {
    pub table: String,
    pub columns: Vec<(String, String)>,
}

/// The tables of a rendered schema and their columns, from its
/// `CREATE TABLE IF NOT EXISTS <keyspace>.<table> (` statements (one column
/// a line, as `schemas/cql/billstream.cql` is written).
pub fn table_columns(cql: &str) -> Vec<TableColumns> {
    let mut tables = Vec::new();
    for statement in statements(cql) {
        let mut lines = statement.lines();
        let Some(head) = lines
            .next()
            .and_then(|l| l.strip_prefix("CREATE TABLE IF NOT EXISTS "))
        else {
            continue;
        };
        let name = head.trim_end_matches('(').trim();
        let table = name.rsplit('.').next().unwrap_or(name).to_owned();
        let mut columns = Vec::new();
        for line in lines {
            let line = line.trim().trim_end_matches(',').trim();
            if line.starts_with(')') {
                break;
            }
            if line.is_empty() || line.starts_with("PRIMARY KEY") {
                continue;
            }
            let Some((column, typ)) = line.split_once(char::is_whitespace) else {
                continue;
            };
            let typ = typ.trim();
            let typ = typ.strip_suffix("PRIMARY KEY").unwrap_or(typ).trim();
            columns.push((column.to_owned(), typ.to_owned()));
        }
        tables.push(TableColumns { table, columns });
    }
    tables
}

/// A CQL type as the server lists it in `system_schema.columns`, for
/// comparison: lower case, no blanks.
fn normal_type(typ: &str) -> String {
    typ.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The `ALTER TABLE … ADD` statements that give `existing` (the table's
/// columns as `system_schema.columns` lists them: name, type) the columns of
/// `wanted`; or why it cannot: a column the schema has with another type
/// (an ALTER cannot change a type; a DBA must decide).
pub fn missing_columns(
    keyspace: &str,
    wanted: &TableColumns,
    existing: &[(String, String)],
) -> Result<Vec<String>, String> {
    let mut alters = Vec::new();
    for (column, typ) in &wanted.columns {
        match existing.iter().find(|(name, _)| name == column) {
            Some((_, found)) if normal_type(found) == normal_type(typ) => {}
            Some((_, found)) => {
                return Err(format!(
                    "column {keyspace}.{}.{column} is `{found}` on the server, but the schema says `{typ}`; \
                     migrate adds missing columns but never changes a type: change or drop it by hand \
                     (see schemas/cql/billstream.cql)",
                    wanted.table
                ));
            }
            None => alters.push(format!(
                "ALTER TABLE {keyspace}.{} ADD {column} {typ}",
                wanted.table
            )),
        }
    }
    Ok(alters)
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
        let cql = render("bs_test", &Replication::Simple { factor: 1 }, None);
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
    fn issue_15_tablets_are_disabled_on_scylladb_6_and_later_only() {
        let nts = Replication::NetworkTopology { factor: 3 };
        let per_dc = Replication::PerDatacenter {
            factors: [("eu".to_string(), 3)].into(),
        };
        let simple = Replication::Simple { factor: 1 };
        let scylla = |v: &str| Backend::Scylla {
            version: v.to_string(),
        };
        let cassandra = Backend::Cassandra {
            release: "5.0.9".into(),
        };
        let keyspace = |backend: &Backend, replication: &Replication| {
            statements(&render("ks", replication, Some(backend)))[0].clone()
        };
        let off = "AND tablets = {'enabled': false}";
        for (backend, replication, tablets_off) in [
            (scylla("6.2.3-0.20250119.bff9ddde1283"), &nts, true),
            (scylla("6.0.0"), &per_dc, true),
            (scylla("2025.1.2-0.20250422.1c5e1ac3a2da"), &nts, true),
            (scylla("2024.2.0"), &nts, true),
            (scylla("2024.1.9"), &nts, false),
            (scylla("5.4.9"), &nts, false),
            // Tablets need NetworkTopologyStrategy.
            (scylla("6.2.3"), &simple, false),
            (cassandra.clone(), &nts, false),
            (cassandra.clone(), &simple, false),
        ] {
            let statement = keyspace(&backend, replication);
            assert_eq!(
                statement.contains(off),
                tablets_off,
                "{backend} {replication:?}: {statement}"
            );
            assert!(statement.ends_with("AND durable_writes = true") != tablets_off);
        }
        // The tables are the same on every backend.
        let on_scylla = statements(&render("ks", &nts, Some(&scylla("6.2.3"))));
        let on_cassandra = statements(&render("ks", &nts, Some(&cassandra)));
        assert_eq!(on_scylla[1..], on_cassandra[1..]);
        // Without a server, the option is shown as a comment and not run.
        let printed = render("ks", &nts, None);
        assert!(printed.contains("-- on ScyllaDB 6+"));
        assert!(!statements(&printed)[0].contains("tablets"));
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
    fn every_table_lists_its_columns_with_their_types() {
        let cql = render("ks", &Replication::Simple { factor: 1 }, None);
        let tables = table_columns(&cql);
        let names: Vec<&str> = tables.iter().map(|t| t.table.as_str()).collect();
        assert_eq!(names, TABLES);
        let accounts = &tables[0];
        assert_eq!(accounts.columns.len(), 9);
        assert_eq!(
            accounts.columns[6],
            (
                "input_offsets".to_string(),
                "frozen<map<frozen<tuple<text, int>>, bigint>>".to_string()
            )
        );
        assert_eq!(
            accounts.columns[8],
            (
                "dead_letters".to_string(),
                "frozen<map<text, blob>>".to_string()
            )
        );
        let owners = tables.last().unwrap();
        assert_eq!(owners.columns[0], ("partition".into(), "int".into()));
        assert_eq!(owners.columns[3], ("claimed_at".into(), "timestamp".into()));
    }

    #[test]
    fn issue_15_migrate_adds_what_an_older_table_lacks_and_refuses_a_changed_type() {
        let tables = table_columns(&render("ks", &Replication::Simple { factor: 1 }, None));
        let accounts = &tables[0];
        // A keyspace made before `dead_letters`, listed as the server does.
        let mut existing: Vec<(String, String)> = accounts
            .columns
            .iter()
            .filter(|(c, _)| c != "dead_letters")
            .map(|(c, t)| (c.clone(), t.to_uppercase().replace(", ", ",")))
            .collect();
        assert_eq!(
            missing_columns("ks", accounts, &existing),
            Ok(vec![
                "ALTER TABLE ks.accounts ADD dead_letters frozen<map<text, blob>>".to_string()
            ])
        );
        existing.push(("dead_letters".into(), "frozen<map<text, blob>>".into()));
        assert_eq!(missing_columns("ks", accounts, &existing), Ok(Vec::new()));
        existing[4].1 = "int".into();
        let err = missing_columns("ks", accounts, &existing).unwrap_err();
        assert!(
            err.contains("ks.accounts.published_upto")
                && err.contains("`int`")
                && err.contains("`bigint`"),
            "{err}"
        );
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
