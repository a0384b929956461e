//! The store's format version and its migrations.
//!
//! The data partition is shared by both A/B slots: a new version on trial (a tryboot start)
//! must leave the store readable by the committed old version, which the firmware boots again
//! if the trial fails. Rule: **a tryboot start never migrates; migration runs after commit.**
//! So a version that changes the format must also read (and write) the old format until its
//! migration has run; [`Store::open_deferred`] opens without migrating, [`Store::migrate`]
//! runs what is pending.
//!
//! The version lives in the `counters` table under `store_format`; a store without it is
//! format 1 (every store made before the key existed). Older relayboxes ignore the key.

use super::index::COUNTERS;
use super::{Store, StoreError};
use redb::ReadableDatabase;

/// The format this relaybox writes after its migrations.
///
/// 2: index changes are made durable by `index.wal` (store/wal.rs), redb only at checkpoints. A
/// format-1 relaybox would ignore the log and lose what redb had not checkpointed, so until the
/// migration has run the writer commits redb durably, as format 1 does.
///
/// 3: bodies up to `INLINE_MAX` are kept in the index (`bodies` table, written through the
/// log) instead of files. A format-2 relaybox would find no file for them, so until the
/// migration has run every body is written as a file, as format 2 does.
pub const FORMAT: u64 = 3;
const KEY: &str = "store_format";

/// One step: from format `to - 1` to `to`, in one write transaction with the version bump.
pub struct Migration {
    pub to: u64,
    pub run: fn(&redb::WriteTransaction) -> Result<(), StoreError>,
}

/// The steps up to [`FORMAT`].
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        to: 2,
        run: |_| Ok(()), // no table changes: the version number alone turns the log on
    },
    Migration {
        to: 3,
        // `bodies` exists already (every open creates it, and older versions ignore it); the
        // files stay where they are, read as before.
        run: |_| Ok(()),
    },
];

/// The first format whose index changes go through `index.wal`.
const LOGGED: u64 = 2;
/// The first format with small bodies in the index.
const INLINE: u64 = 3;

impl Store {
    /// The format the store on disk is in.
    pub fn format(&self) -> Result<u64, StoreError> {
        let txn = self.inner.db.begin_read()?;
        let t = txn.open_table(COUNTERS)?;
        let v = t.get(KEY)?.map(|v| v.value());
        Ok(v.unwrap_or(1))
    }

    /// Opens without migrating (a tryboot start). Refuses a store newer than this relaybox.
    pub fn open_deferred(dir: &std::path::Path) -> Result<Store, StoreError> {
        let s = super::recover::open(dir)?;
        let f = s.format()?;
        if f > FORMAT {
            return Err(newer(f, FORMAT));
        }
        s.set_logged(f);
        Ok(s)
    }

    /// Whether [`Store::migrate`] has something to do.
    pub fn migration_pending(&self) -> Result<bool, StoreError> {
        Ok(self.format()? < FORMAT)
    }

    /// Brings the store to [`FORMAT`]; returns the format it is in afterwards.
    pub fn migrate(&self) -> Result<u64, StoreError> {
        self.migrate_to(FORMAT, MIGRATIONS)
    }

    pub fn migrate_to(&self, target: u64, steps: &[Migration]) -> Result<u64, StoreError> {
        let mut cur = self.format()?;
        if cur > target {
            return Err(newer(cur, target));
        }
        while cur < target {
            let step = steps.iter().find(|m| m.to == cur + 1).ok_or_else(|| {
                StoreError::Db(format!("no migration of the store from format {cur}"))
            })?;
            let txn = super::recover::begin_durable(&self.inner.db)?;
            (step.run)(&txn)?;
            txn.open_table(COUNTERS)?.insert(KEY, step.to)?;
            txn.commit()?;
            tracing::info!(from = cur, to = step.to, "store migrated");
            cur = step.to;
        }
        self.set_logged(cur);
        Ok(cur)
    }

    fn set_logged(&self, format: u64) {
        use std::sync::atomic::Ordering;
        self.inner.logged.store(format >= LOGGED, Ordering::Release);
        let max = if format >= INLINE {
            super::INLINE_MAX
        } else {
            0
        };
        self.inner.inline_max.store(max, Ordering::Release);
    }
}

fn newer(found: u64, known: u64) -> StoreError {
    StoreError::Db(format!(
        "the store is in format {found}, newer than this relaybox reads ({known}): a newer \
         version was committed on this data partition"
    ))
}
