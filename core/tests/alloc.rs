//! The hot path does not allocate per record: producing and fetching a batch of 1,000
//! records costs the same number of allocations as a batch of 10.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::{ApiKey, RequestKind};
use seedlog_core::config::BrokerConfig;
use seedlog_core::memdisk::MemDisk;
use seedlog_core::wire::{
    encode_request, fetch_request, produce_request, record_batch, topic_name,
};
use seedlog_core::{Broker, Now, Output, Recovered};

/// Counts every allocation made by this test binary.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const NOW: Now = Now::at(1_700_000_000_000);

fn step(broker: &mut Broker, disk: &mut MemDisk) {
    while let Some(output) = broker.poll_output() {
        if let Output::Storage(op) = output {
            if let Some(done) = disk.execute(op) {
                broker.handle_storage(NOW, done);
            }
        }
    }
}

fn request(api: ApiKey, version: i16, body: RequestKind) -> Bytes {
    encode_request(api, version, 1, &body)
        .expect("encodes")
        .slice(4..)
}

/// Allocations made by the broker to produce, then fetch, one batch of `records` records.
fn allocations_for(records: usize) -> (u64, u64) {
    let mut broker =
        Broker::new(BrokerConfig::default(), Recovered::default(), 1, NOW).expect("starts");
    let mut disk = MemDisk::new();
    let create = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(topic_name("t"))
        .with_num_partitions(1)
        .with_replication_factor(1)]);
    broker.handle_request(
        NOW,
        1,
        request(ApiKey::CreateTopics, 7, RequestKind::CreateTopics(create)),
    );
    step(&mut broker, &mut disk);

    let value = [7u8; 100];
    let batch = record_batch((0..records).map(|_| (None, &value[..], NOW.wall)));
    let produce = request(ApiKey::Produce, 9, produce_request("t", 0, -1, 5000, batch));
    let fetch = request(
        ApiKey::Fetch,
        12,
        fetch_request([("t", 0, 0)], 0, 1 << 24, 1 << 24),
    );

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    broker.handle_request(NOW, 1, produce);
    step(&mut broker, &mut disk);
    let produced = ALLOCATIONS.load(Ordering::Relaxed) - before;

    let before = ALLOCATIONS.load(Ordering::Relaxed);
    broker.handle_request(NOW, 1, fetch);
    step(&mut broker, &mut disk);
    let fetched = ALLOCATIONS.load(Ordering::Relaxed) - before;
    (produced, fetched)
}

#[test]
fn produce_and_fetch_allocate_per_batch_not_per_record() {
    allocations_for(1); // warm up lazy statics
    let small = allocations_for(10);
    let large = allocations_for(1000);
    assert_eq!(
        small, large,
        "allocations (produce, fetch) for 10 vs 1,000 records"
    );
    assert!(small.0 > 0 && small.1 > 0, "the counter counts: {small:?}");
}
