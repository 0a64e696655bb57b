//! Everything that crosses cores: one message enum, two bounded transports.
//!
//! - The control thread (signals) reaches each shard through a bounded crossbeam channel that the
//!   shard's housekeeping task polls ([`ControlPlane`]); only [`ShardMsg::Drain`] travels there.
//! - Shards reach each other through a glommio full mesh of bounded SPSC channels, created once at
//!   startup (`Mesh`); only snapshot gathers (statistics, metrics) travel there.
//!
//! Nothing here is on the request path, and nothing here ever waits on a full channel: every
//! mesh send is a `try_send`, so two shards can never deadlock replying to each other, and a
//! stalled or exited peer costs a gather one [`GATHER_TIMEOUT`] at most. A shard runs at most
//! [`MAX_CONCURRENT_GATHERS`] gathers at once; the control channel holds
//! [`CONTROL_CHANNEL_CAPACITY`] messages.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crossbeam::channel;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::sync::Semaphore;
use glommio::TaskQueueHandle;

use crate::error::ApiError;
use crate::metrics::ShardMetricsSnapshot;
use crate::service::Gather;
use crate::stats::StatsSnapshot;

/// Capacity of each mesh channel.
pub const MESH_CHANNEL_CAPACITY: usize = 64;
/// Statistics gathers one shard runs at once; more wait their turn.
pub const MAX_CONCURRENT_GATHERS: u64 = 8;
/// How long a gather waits for every peer.
pub const GATHER_TIMEOUT: Duration = Duration::from_secs(2);
/// Capacity of each shard's control channel.
pub const CONTROL_CHANNEL_CAPACITY: usize = 4;

/// Every message that crosses cores.
#[derive(Debug)]
pub enum ShardMsg {
    /// Control thread → every shard, on SIGTERM/SIGINT: stop accepting, turn readiness to 503,
    /// finish in-flight requests, and exit by `deadline`.
    Drain {
        /// When the shard stops waiting for in-flight requests.
        deadline: Instant,
    },
    /// Shard → peer: send me your snapshot of `what`.
    SnapshotRequest {
        /// The asking shard's mesh peer id.
        from: usize,
        /// Matches the reply to the gather.
        ticket: u64,
        /// Statistics or metrics.
        what: Gather,
    },
    /// Peer → asking shard: its snapshot.
    SnapshotReply {
        /// From the request.
        ticket: u64,
        /// The peer's numbers.
        snapshot: Snapshot,
    },
}

/// One shard's numbers, as a gather collects them.
#[derive(Debug)]
pub enum Snapshot {
    /// Triton statistics.
    Stats(StatsSnapshot),
    /// Prometheus metrics and gauges.
    Metrics(ShardMetricsSnapshot),
}

/// What a shard can take snapshots of (implemented by the shard).
pub(crate) trait SnapshotSource {
    /// This shard's numbers for `what`.
    fn snapshot(&self, what: Gather) -> Snapshot;
}

/// The control thread's handle on every shard.
#[derive(Clone)]
pub struct ControlPlane {
    shards: Vec<channel::Sender<ShardMsg>>,
}

impl ControlPlane {
    /// A control plane for `shards` shards and the receiving end for each.
    pub fn new(shards: usize) -> (Self, Vec<channel::Receiver<ShardMsg>>) {
        let (senders, receivers) = (0..shards)
            .map(|_| channel::bounded(CONTROL_CHANNEL_CAPACITY))
            .unzip();
        (ControlPlane { shards: senders }, receivers)
    }

    /// Tells every shard to drain by `deadline`. Never blocks: a shard whose channel is full
    /// already has a drain pending.
    pub fn drain(&self, deadline: Instant) {
        for s in &self.shards {
            let _ = s.try_send(ShardMsg::Drain { deadline });
        }
    }
}

/// A shard's end of the mesh.
pub(crate) struct Mesh {
    senders: Senders<ShardMsg>,
    pending: RefCell<HashMap<u64, LocalSender<Snapshot>>>,
    next_ticket: Cell<u64>,
    gathers: Semaphore,
}

impl Mesh {
    /// Joins the mesh (waits until every shard has joined). Start the receive loops with
    /// [`Mesh::serve`] once the shard exists.
    pub(crate) async fn join(
        builder: MeshBuilder<ShardMsg, Full>,
    ) -> Result<(Rc<Mesh>, Receivers<ShardMsg>), String> {
        let (senders, receivers): (Senders<ShardMsg>, Receivers<ShardMsg>) =
            builder
                .join()
                .await
                .map_err(|e| format!("cannot join the shard mesh: {e}"))?;
        let mesh = Rc::new(Mesh {
            senders,
            pending: RefCell::new(HashMap::new()),
            next_ticket: Cell::new(0),
            gathers: Semaphore::new(MAX_CONCURRENT_GATHERS),
        });
        Ok((mesh, receivers))
    }

    /// Starts one receive loop per peer, answering with `source`'s snapshots.
    pub(crate) fn serve(
        self: &Rc<Self>,
        mut receivers: Receivers<ShardMsg>,
        source: Rc<dyn SnapshotSource>,
        queue: TaskQueueHandle,
    ) -> Result<(), String> {
        for (_, rx) in receivers.streams() {
            let mesh = self.clone();
            let source = source.clone();
            glommio::spawn_local_into(
                async move {
                    while let Some(msg) = rx.recv().await {
                        mesh.on_message(msg, source.as_ref());
                    }
                },
                queue,
            )
            .map_err(|e| format!("cannot spawn a mesh receiver: {e}"))?
            .detach();
        }
        Ok(())
    }

    fn on_message(&self, msg: ShardMsg, source: &dyn SnapshotSource) {
        match msg {
            ShardMsg::SnapshotRequest { from, ticket, what } => {
                let snapshot = source.snapshot(what);
                // If the asker's channel is full or the asker has exited, drop the reply: the
                // asker's gather times out rather than anyone waiting here.
                let _ = self
                    .senders
                    .try_send_to(from, ShardMsg::SnapshotReply { ticket, snapshot });
            }
            ShardMsg::SnapshotReply { ticket, snapshot } => {
                if let Some(tx) = self.pending.borrow().get(&ticket) {
                    // Sized for every peer: cannot be full. A late reply to a gather that timed
                    // out finds no entry and is dropped.
                    let _ = tx.try_send(snapshot);
                }
            }
            ShardMsg::Drain { .. } => {
                debug_assert!(false, "Drain travels the control channel, never the mesh")
            }
        }
    }

    /// Every shard's snapshot of `what`, this shard's (`local`) first.
    pub(crate) async fn gather(
        &self,
        what: Gather,
        local: Snapshot,
    ) -> Result<Vec<Snapshot>, ApiError> {
        let _permit = self
            .gathers
            .acquire_permit(1)
            .await
            .map_err(|_| ApiError::unavailable("the shard is shutting down"))?;
        let me = self.senders.peer_id();
        let peers = (0..self.senders.nr_consumers())
            .filter(|&p| p != me)
            .count();
        let mut all = Vec::with_capacity(peers + 1);
        all.push(local);
        if peers == 0 {
            return Ok(all);
        }
        let ticket = self.next_ticket.get();
        self.next_ticket.set(ticket.wrapping_add(1));
        let (tx, rx) = local_channel::new_bounded(peers);
        // Removed however this future ends, including when it is dropped mid-gather.
        let _pending = PendingGuard::new(&self.pending, ticket, tx);
        for p in (0..self.senders.nr_consumers()).filter(|&p| p != me) {
            self.senders
                .try_send_to(
                    p,
                    ShardMsg::SnapshotRequest {
                        from: me,
                        ticket,
                        what,
                    },
                )
                .map_err(|_| ApiError::unavailable("a shard is busy or shutting down; retry"))?;
        }
        let replies = glommio::timer::timeout(GATHER_TIMEOUT, async {
            let mut replies = Vec::with_capacity(peers);
            while replies.len() < peers {
                match rx.recv().await {
                    Some(s) => replies.push(s),
                    None => break,
                }
            }
            Ok(replies)
        })
        .await
        .ok()
        .filter(|r| r.len() == peers)
        .ok_or_else(|| ApiError::unavailable("a shard did not report its numbers in time"))?;
        all.extend(replies);
        Ok(all)
    }
}

/// A pending gather's reply slot, removed from the table on drop.
struct PendingGuard<'m> {
    table: &'m RefCell<HashMap<u64, LocalSender<Snapshot>>>,
    ticket: u64,
}

impl<'m> PendingGuard<'m> {
    fn new(
        table: &'m RefCell<HashMap<u64, LocalSender<Snapshot>>>,
        ticket: u64,
        tx: LocalSender<Snapshot>,
    ) -> Self {
        table.borrow_mut().insert(ticket, tx);
        PendingGuard { table, ticket }
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.table.borrow_mut().remove(&self.ticket);
    }
}
