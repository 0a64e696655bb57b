//! The shard's named task queues: one table of shares and latency classes.
//!
//! Connection I/O is latency-sensitive; batchers and inline batches run in their own queue with
//! equal shares, so a long inline batch yields to I/O between batches; housekeeping (the mesh,
//! the sweeper, the drain) gets a small share and never preempts requests.

use std::time::Duration;

use glommio::{executor, Latency, Shares, TaskQueueHandle};

/// Shares of the connection queue.
const IO_SHARES: usize = 1000;
/// How soon a latency-sensitive task wants to run once runnable.
const IO_LATENCY: Duration = Duration::from_millis(1);
/// Shares of the batch queue: batchers and inline batches get as much CPU as connection I/O when
/// both have work, so neither starves the other.
const BATCH_SHARES: usize = 1000;
/// Shares of the housekeeping queue.
const ADMIN_SHARES: usize = 50;

/// The queues of one shard.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TaskQueues {
    /// Accept loop and connections.
    pub io: TaskQueueHandle,
    /// Batchers, and inline batches.
    pub batch: TaskQueueHandle,
    /// Mesh receivers, the sweeper, control messages.
    pub admin: TaskQueueHandle,
}

impl TaskQueues {
    /// Creates the queues on the current executor.
    pub(crate) fn create() -> Self {
        let ex = executor();
        TaskQueues {
            io: ex.create_task_queue(
                Shares::Static(IO_SHARES),
                Latency::Matters(IO_LATENCY),
                "io",
            ),
            batch: ex.create_task_queue(
                Shares::Static(BATCH_SHARES),
                Latency::NotImportant,
                "batch",
            ),
            admin: ex.create_task_queue(
                Shares::Static(ADMIN_SHARES),
                Latency::NotImportant,
                "admin",
            ),
        }
    }
}
