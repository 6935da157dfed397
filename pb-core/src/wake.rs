//! A waker that notes that it woke, for a task that polls a rarely ready future beside a busy
//! one (a close signal or a timer beside reads, a shutdown beside accepts): the task polls the
//! rare one only after it woke the task, since polling it every time costs more than the busy
//! one's own bookkeeping.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

/// Give `Waker::from(Arc<FlagWake>)` (or a waker that calls [`FlagWake::wake`]) to the rare
/// future, and ask [`FlagWake::take`] before polling it.
#[derive(Debug)]
pub struct FlagWake {
    /// Set by a wake-up, taken by the task's next poll. Starts set: the first poll arms the
    /// future.
    woken: AtomicBool,
    /// The task's waker.
    task: Mutex<Option<Waker>>,
}

impl Default for FlagWake {
    fn default() -> Self {
        FlagWake {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        }
    }
}

impl FlagWake {
    /// Whether a wake-up came since the last call. `task` is the polling task's waker, passed
    /// on by wake-ups; `known` is the task's copy of what it gave last (no lock while it is the
    /// same).
    pub fn take(&self, task: &Waker, known: &mut Option<Waker>) -> bool {
        if !known.as_ref().is_some_and(|w| w.will_wake(task)) {
            *known = Some(task.clone());
            *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.clone());
        }
        self.woken.load(Ordering::Acquire) && self.woken.swap(false, Ordering::AcqRel)
    }

    /// Have the next [`FlagWake::take`] say yes.
    pub fn force(&self) {
        self.woken.store(true, Ordering::Release);
    }

    /// Drop the task's waker (the task has ended).
    pub fn forget_task(&self) {
        drop(self.task.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    /// Note the wake-up and wake the task.
    pub fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl Wake for FlagWake {
    fn wake(self: Arc<Self>) {
        FlagWake::wake(&self);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        FlagWake::wake(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_is_taken_once_and_passed_on_to_the_task() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let count = Arc::new(Count(Default::default()));
        let task = Waker::from(count.clone());
        let flag = Arc::new(FlagWake::default());
        let mut known = None;
        // Set at first, so that the first poll arms the rare future.
        assert!(flag.take(&task, &mut known));
        assert!(!flag.take(&task, &mut known));
        Waker::from(flag.clone()).wake_by_ref();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
        assert!(flag.take(&task, &mut known));
        assert!(!flag.take(&task, &mut known));
        flag.force();
        assert!(flag.take(&task, &mut known));
        // A wake after the task ended reaches no one.
        flag.forget_task();
        Waker::from(flag.clone()).wake();
        assert_eq!(count.0.load(Ordering::Relaxed), 1);
    }
}
