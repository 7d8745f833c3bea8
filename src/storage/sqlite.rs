//! The SQLite index (embedded default): WAL journal, `synchronous = FULL`, one writer at a time
//! (`BEGIN IMMEDIATE`, so a read-then-write transaction never fails on a lock upgrade).

use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, Transaction};

use super::{IndexOptions, StorageError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteIndex {
    pool: SqlitePool,
}

impl SqliteIndex {
    pub async fn open(url: &str, options: &IndexOptions) -> Result<Self, StorageError> {
        let connect = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // SQLite has no statement timeout; a writer waits this long for the write lock.
            .busy_timeout(options.statement_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.connect_timeout)
            .connect_with(connect)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StorageError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

// One writer at a time: a second committer would only wait for the lock.
super::sql::impl_index!(SqliteIndex, Sqlite, commit_workers = 1);
