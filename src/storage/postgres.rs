//! The PostgreSQL index (production): a connection pool, a server-side statement timeout, and
//! migrations run under sqlx's advisory lock so that replicas starting together migrate once.
//!
//! Write transactions run at READ COMMITTED. A writer moves the current pointer only from the
//! version it expects (`UPDATE ... WHERE current_version = expected`, or an insert that does
//! nothing if the resource exists); a concurrent writer of the same resource waits for the
//! first to commit, then finds the pointer moved and reports a conflict, which is the same
//! outcome SQLite gets from its single writer. Batches take their row locks in (tenant, type, id)
//! order, so two batches never deadlock on each other.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use super::{IndexOptions, StorageError};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

pub struct PostgresIndex {
    pool: PgPool,
}

impl PostgresIndex {
    pub async fn open(url: &str, options: &IndexOptions) -> Result<Self, StorageError> {
        let statement_timeout = format!("{}ms", options.statement_timeout.as_millis());
        let connect = PgConnectOptions::from_str(url)?
            .application_name("fhirvault")
            .options([("statement_timeout", statement_timeout.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.connect_timeout)
            .connect_with(connect)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, StorageError> {
        Ok(self.pool.begin().await?)
    }
}

// Two committers: one flushes its batch while the other fills the next.
super::sql::impl_index!(PostgresIndex, Postgres, commit_workers = 2);
