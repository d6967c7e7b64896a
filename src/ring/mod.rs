//! Bounded lock-free single-producer single-consumer rings, one per (worker, sink).
//!
//! A data-plane worker owns the `Producer`, a sink thread owns the `Consumer`. `push` never
//! blocks and never allocates: a full ring returns the value and the caller counts a drop.
//! Slots are allocated once, at creation. Producer and consumer indices live on separate cache
//! lines (`#[repr(align(128))]`, as glommio does) so the two cores don't false-share.
//!
//! Refuses: more than one producer or consumer (the halves are `Send` but not `Clone`/`Sync`).

use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Creates a ring holding up to `capacity` values (rounded up to a power of two).
pub fn channel<T: Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    make(capacity, MaybeUninit::uninit, false)
}

/// A ring whose every slot starts as a copy of `fill`, for `Producer::push_in_place`: a
/// producer that changes part of a large value writes only that part (a 20 ms G.711 frame is
/// 320 bytes of a ~2 KiB slot). Every slot is written here, so the ring's memory is resident
/// from the start, a fixed pool rather than pages faulted in under load.
pub fn channel_filled<T: Copy + Send>(capacity: usize, fill: T) -> (Producer<T>, Consumer<T>) {
    make(capacity, || MaybeUninit::new(fill), true)
}

fn make<T: Send>(
    capacity: usize,
    slot: impl Fn() -> MaybeUninit<T>,
    filled: bool,
) -> (Producer<T>, Consumer<T>) {
    assert!(capacity > 0, "ring capacity must be positive");
    let capacity = capacity.next_power_of_two();
    let slots = (0..capacity)
        .map(|_| UnsafeCell::new(slot()))
        .collect::<Vec<_>>()
        .into_boxed_slice();
    let shared = Arc::new(Shared {
        head: CachePadded(AtomicUsize::new(0)),
        tail: CachePadded(AtomicUsize::new(0)),
        mask: capacity - 1,
        filled,
        slots,
    });
    (
        Producer {
            shared: shared.clone(),
            head_cache: 0,
            tail: 0,
        },
        Consumer {
            shared,
            tail_cache: 0,
            head: 0,
        },
    )
}

/// The sending half. Owned by exactly one thread at a time.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// Last observed consumer index; refreshed only when the ring looks full.
    head_cache: usize,
    /// Our own write index (mirror of `shared.tail`).
    tail: usize,
}

/// The receiving half. Owned by exactly one thread at a time.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// Last observed producer index; refreshed only when the ring looks empty.
    tail_cache: usize,
    /// Our own read index (mirror of `shared.head`).
    head: usize,
}

#[repr(align(128))]
struct CachePadded<T>(T);

struct Shared<T> {
    /// Next index to read; written by the consumer only.
    head: CachePadded<AtomicUsize>,
    /// Next index to write; written by the producer only.
    tail: CachePadded<AtomicUsize>,
    mask: usize,
    /// Every slot holds an initialised value at all times (`channel_filled`, `T: Copy`).
    filled: bool,
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

// SAFETY: a slot is accessed by the producer only while it is outside [head, tail) and by the
// consumer only while it is inside; the Release/Acquire pairs on `tail` and `head` order those
// accesses, so no slot is ever touched by both threads at once.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T: Send> Producer<T> {
    /// Appends `value`, or gives it back when the ring is full (the caller counts the drop).
    pub fn push(&mut self, value: T) -> Result<(), T> {
        let Some(slot) = self.next_free() else {
            return Err(value);
        };
        // SAFETY: the slot is outside [head, tail), so the consumer does not access it.
        unsafe { (*slot.get()).write(value) };
        self.publish();
        Ok(())
    }

    /// The slot the next value goes to, if the ring has room.
    fn next_free(&mut self) -> Option<&UnsafeCell<MaybeUninit<T>>> {
        let capacity = self.shared.mask + 1;
        if self.tail.wrapping_sub(self.head_cache) == capacity {
            // Acquire: the consumer's reads of the slots it released happen before our writes.
            self.head_cache = self.shared.head.0.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.head_cache) == capacity {
                return None;
            }
        }
        Some(&self.shared.slots[self.tail & self.shared.mask])
    }

    /// Hands the slot `next_free` gave to the consumer.
    fn publish(&mut self) {
        self.tail = self.tail.wrapping_add(1);
        // Release: the slot write before this becomes visible before the consumer sees the
        // new tail.
        self.shared.tail.0.store(self.tail, Ordering::Release);
    }

    /// Number of values the ring can hold.
    pub fn capacity(&self) -> usize {
        self.shared.mask + 1
    }
}

impl<T: Copy + Send> Producer<T> {
    /// Lets `f` update the next slot in place, then publishes it; false when the ring is full
    /// (the caller counts the drop). The slot holds whatever was last written to it, so `f`
    /// must set every part the consumer reads. Rings from `channel_filled` only.
    pub fn push_in_place(&mut self, f: impl FnOnce(&mut T)) -> bool {
        assert!(
            self.shared.filled,
            "push_in_place needs a ring from channel_filled"
        );
        let Some(slot) = self.next_free() else {
            return false;
        };
        // SAFETY: the slot is outside [head, tail), so the consumer does not access it. It
        // was initialised by `channel_filled` and stays so: a `Copy` value has no drop, and
        // the consumer's reads (`pop`, `pop_with`) leave its bytes in place.
        f(unsafe { (*slot.get()).assume_init_mut() });
        self.publish();
        true
    }
}

impl<T: Send> Consumer<T> {
    /// Removes the oldest value, if any.
    pub fn pop(&mut self) -> Option<T> {
        if self.head == self.tail_cache {
            // Acquire: pairs with the producer's Release store of `tail`.
            self.tail_cache = self.shared.tail.0.load(Ordering::Acquire);
            if self.head == self.tail_cache {
                return None;
            }
        }
        let slot = &self.shared.slots[self.head & self.shared.mask];
        // SAFETY: the slot is inside [head, tail): the producer initialised it and won't touch it
        // until we advance `head`.
        let value = unsafe { (*slot.get()).assume_init_read() };
        self.head = self.head.wrapping_add(1);
        // Release: our read of the slot completes before the producer may overwrite it.
        self.shared.head.0.store(self.head, Ordering::Release);
        Some(value)
    }

    /// Hands the oldest value to `f` in place, then drops it and frees its slot: no copy out of
    /// the ring (a frame is ~2 KiB; the recorder only reads it).
    pub fn pop_with<R>(&mut self, f: impl FnOnce(&T) -> R) -> Option<R> {
        if self.head == self.tail_cache {
            // Acquire: pairs with the producer's Release store of `tail`.
            self.tail_cache = self.shared.tail.0.load(Ordering::Acquire);
            if self.head == self.tail_cache {
                return None;
            }
        }
        let slot = &self.shared.slots[self.head & self.shared.mask];
        // SAFETY: the slot is inside [head, tail): initialised by the producer, which won't
        // touch it until we advance `head`. If `f` panics we leave without advancing, so the
        // value is neither dropped twice nor overwritten while referenced.
        let result = f(unsafe { (*slot.get()).assume_init_ref() });
        // SAFETY: as above; the value is dropped exactly once, before the slot is released.
        unsafe { (*slot.get()).assume_init_drop() };
        self.head = self.head.wrapping_add(1);
        // Release: our reads of the slot complete before the producer may overwrite it.
        self.shared.head.0.store(self.head, Ordering::Release);
        Some(result)
    }

    /// Values waiting, as seen now (may be stale by the time it returns).
    pub fn len(&self) -> usize {
        self.shared
            .tail
            .0
            .load(Ordering::Acquire)
            .wrapping_sub(self.head)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        let head = *self.head.0.get_mut();
        let tail = *self.tail.0.get_mut();
        let mut i = head;
        while i != tail {
            // SAFETY: slots in [head, tail) are initialised and no half is alive any more.
            unsafe { self.slots[i & self.mask].get_mut().assume_init_drop() };
            i = i.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full ring refuses and hands the value back; draining makes room again.
    #[test]
    fn full_ring_returns_value() {
        let (mut p, mut c) = channel::<u32>(4);
        for i in 0..4 {
            p.push(i).unwrap();
        }
        assert_eq!(p.push(99), Err(99));
        assert_eq!(c.pop(), Some(0));
        p.push(4).unwrap();
        assert_eq!(
            (1..=4).map(|_| c.pop().unwrap()).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert_eq!(c.pop(), None);
    }

    /// Two threads: every value pushed successfully is popped exactly once and in order.
    #[test]
    fn cross_thread_order() {
        let (mut p, mut c) = channel::<u64>(64);
        const N: u64 = 200_000;
        let producer = std::thread::spawn(move || {
            let mut dropped = 0u64;
            for i in 0..N {
                let mut v = i;
                loop {
                    match p.push(v) {
                        Ok(()) => break,
                        Err(back) => {
                            v = back;
                            dropped += 1;
                            std::thread::yield_now();
                        }
                    }
                }
            }
            dropped
        });
        let mut expected = 0;
        while expected < N {
            if let Some(v) = c.pop() {
                assert_eq!(v, expected);
                expected += 1;
            }
        }
        producer.join().unwrap();
        assert!(c.pop().is_none());
    }

    /// pop_with reads in place, in order, and drops each value exactly once.
    #[test]
    fn pop_with_in_place() {
        let marker = Arc::new(());
        let (mut p, mut c) = channel::<(u32, Arc<()>)>(4);
        p.push((1, marker.clone())).unwrap();
        p.push((2, marker.clone())).unwrap();
        assert_eq!(c.pop_with(|v| v.0), Some(1));
        assert_eq!(Arc::strong_count(&marker), 2);
        assert_eq!(c.pop_with(|v| v.0), Some(2));
        assert_eq!(c.pop_with(|v| v.0), None);
        assert_eq!(Arc::strong_count(&marker), 1);
    }

    /// A filled ring updated in place: the consumer sees each push's writes, in order, and a
    /// full ring refuses without calling the closure.
    #[test]
    fn push_in_place_on_a_filled_ring() {
        let (mut p, mut c) = channel_filled::<[u32; 4]>(2, [7; 4]);
        assert!(p.push_in_place(|v| v[0] = 1));
        assert!(p.push_in_place(|v| v[1] = 2));
        assert!(!p.push_in_place(|_| unreachable!("full")));
        assert_eq!(c.pop(), Some([1, 7, 7, 7]));
        assert_eq!(c.pop_with(|v| *v), Some([7, 2, 7, 7]));
        // The slot keeps what was last written there.
        assert!(p.push_in_place(|v| v[2] = 3));
        assert_eq!(c.pop(), Some([1, 7, 3, 7]));
    }

    #[test]
    #[should_panic(expected = "channel_filled")]
    fn push_in_place_refuses_an_unfilled_ring() {
        let (mut p, _c) = channel::<u32>(2);
        p.push_in_place(|v| *v = 1);
    }

    /// Values still in the ring are dropped with it (no leak).
    #[test]
    fn drops_remaining() {
        let marker = Arc::new(());
        let (mut p, c) = channel::<Arc<()>>(8);
        p.push(marker.clone()).unwrap();
        p.push(marker.clone()).unwrap();
        drop(p);
        drop(c);
        assert_eq!(Arc::strong_count(&marker), 1);
    }
}
