//! The database schema's version against this binary's migrations, checked before
//! any migration runs: a database that a newer (or a different) release migrated is
//! refused with a message naming both versions, and left untouched. sqlx's own check
//! comes later and only says "migration N was previously applied but is missing".
//!
//! [`compare`] is pure (tests feed it lists); [`applied`] reads `_sqlx_migrations`.

use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Row};

use super::Backend;

/// This binary's release, as `otpdial --version` prints it.
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");

/// One row of `_sqlx_migrations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: i64,
    pub description: String,
    pub success: bool,
    pub checksum: Vec<u8>,
}

/// One migration this binary carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub version: i64,
    pub description: String,
    pub checksum: Vec<u8>,
}

/// The schema before and after `migrate` (0 = an empty database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaChange {
    pub from: i64,
    pub to: i64,
}

impl SchemaChange {
    /// `schema version 2 -> 8 (6 migrations applied)`, or `schema version 8 (up to date)`.
    pub fn describe(&self) -> String {
        if self.from == self.to {
            format!("schema version {} (up to date)", self.to)
        } else {
            format!("schema version {} -> {}", self.from, self.to)
        }
    }
}

/// Why this binary will not touch the database's schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the database has schema version {database}, newer than this otpdial {RELEASE} knows \
         (schema versions up to {binary}): a newer release migrated it. Run that release or a \
         newer one, or restore the backup taken before the upgrade; the database was not changed"
    )]
    Newer { database: i64, binary: i64 },
    #[error(
        "the database has schema migration {version} ({description}), which this otpdial \
         {RELEASE} does not carry (it has versions {binary}): another build of otpdial migrated \
         it. Run that build, or restore a backup; the database was not changed"
    )]
    Unknown {
        version: i64,
        description: String,
        binary: String,
    },
    #[error(
        "schema migration {version} ({description}) in the database differs from the one in \
         this otpdial {RELEASE}: it was applied by a build with another text of that migration. \
         Run that build, or restore a backup; the database was not changed"
    )]
    Modified { version: i64, description: String },
    #[error(
        "schema migration {version} ({description}) was started but never finished (a crash or \
         a failed statement during a migration): restore the backup taken before it, or finish \
         it by hand and mark it done in _sqlx_migrations; the database was not changed"
    )]
    Unfinished { version: i64, description: String },
}

/// The migrations a migrator carries.
pub fn known(migrator: &Migrator) -> Vec<Known> {
    migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| Known {
            version: m.version,
            description: m.description.to_string(),
            checksum: m.checksum.to_vec(),
        })
        .collect()
}

/// Whether this binary may migrate a database holding `applied`; Ok with the version
/// it is at now (0 when empty). Pure.
pub fn compare(applied: &[Applied], known: &[Known]) -> Result<i64, SchemaError> {
    let newest_known = known.iter().map(|k| k.version).max().unwrap_or(0);
    if let Some(newest) = applied
        .iter()
        .map(|a| a.version)
        .filter(|v| *v > newest_known)
        .max()
    {
        return Err(SchemaError::Newer {
            database: newest,
            binary: newest_known,
        });
    }
    for a in applied {
        let Some(k) = known.iter().find(|k| k.version == a.version) else {
            return Err(SchemaError::Unknown {
                version: a.version,
                description: a.description.clone(),
                binary: versions(known),
            });
        };
        if !a.success {
            return Err(SchemaError::Unfinished {
                version: a.version,
                description: a.description.clone(),
            });
        }
        if k.checksum != a.checksum {
            return Err(SchemaError::Modified {
                version: a.version,
                description: a.description.clone(),
            });
        }
    }
    Ok(applied.iter().map(|a| a.version).max().unwrap_or(0))
}

/// `1-4, 8` style list of versions.
fn versions(known: &[Known]) -> String {
    let mut v: Vec<i64> = known.iter().map(|k| k.version).collect();
    v.sort_unstable();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        while i + 1 < v.len() && v[i + 1] == v[i] + 1 {
            i += 1;
        }
        parts.push(if v[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", v[i])
        });
        i += 1;
    }
    parts.join(", ")
}

/// The rows of `_sqlx_migrations`; empty when the table does not exist yet.
pub async fn applied(pool: &AnyPool, backend: Backend) -> Result<Vec<Applied>, sqlx::Error> {
    let exists = match backend {
        Backend::Sqlite => {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
        }
        Backend::Postgres => {
            "SELECT COUNT(*) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = '_sqlx_migrations'"
        }
    };
    let n: i64 = sqlx::query(exists).fetch_one(pool).await?.try_get(0)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT version, description, CAST(CASE WHEN success THEN 1 ELSE 0 END AS BIGINT), \
         checksum FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Applied {
                version: r.try_get(0)?,
                description: r.try_get(1)?,
                success: r.try_get::<i64, _>(2)? != 0,
                checksum: r.try_get(3)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(version: i64, sum: u8) -> Known {
        Known {
            version,
            description: format!("m{version}"),
            checksum: vec![sum],
        }
    }

    fn a(version: i64, sum: u8) -> Applied {
        Applied {
            version,
            description: format!("m{version}"),
            success: true,
            checksum: vec![sum],
        }
    }

    #[test]
    fn empty_and_older_databases_may_be_migrated() {
        let known = [k(1, 1), k(2, 2), k(3, 3)];
        assert_eq!(compare(&[], &known), Ok(0));
        assert_eq!(compare(&[a(1, 1), a(2, 2)], &known), Ok(2));
        assert_eq!(compare(&[a(1, 1), a(2, 2), a(3, 3)], &known), Ok(3));
    }

    #[test]
    fn a_newer_database_names_both_versions() {
        let known = [k(1, 1), k(2, 2)];
        let err = compare(&[a(1, 1), a(2, 2), a(3, 9), a(7, 9)], &known).unwrap_err();
        assert_eq!(
            err,
            SchemaError::Newer {
                database: 7,
                binary: 2
            }
        );
        let text = err.to_string();
        assert!(text.contains("schema version 7"), "{text}");
        assert!(text.contains("up to 2"), "{text}");
        assert!(text.contains(RELEASE), "{text}");
    }

    #[test]
    fn unknown_modified_and_unfinished_migrations_are_refused() {
        let known = [k(1, 1), k(2, 2), k(4, 4)];
        assert!(matches!(
            compare(&[a(1, 1), a(3, 3)], &known),
            Err(SchemaError::Unknown { version: 3, ref binary, .. }) if binary == "1-2, 4"
        ));
        assert!(matches!(
            compare(&[a(1, 1), a(2, 7)], &known),
            Err(SchemaError::Modified { version: 2, .. })
        ));
        let mut half = a(2, 2);
        half.success = false;
        assert!(matches!(
            compare(&[a(1, 1), half], &known),
            Err(SchemaError::Unfinished { version: 2, .. })
        ));
    }
}
