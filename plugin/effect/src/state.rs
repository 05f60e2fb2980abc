//! Process-global state, behind `parking_lot` locks (never in instances): the Load refcount,
//! what we learnt about the host, and the caches that PurgeCaches and the last Unload free.
//!
//! Hosts load the plug-in in different ways: MLT sends Load several times
//! without Unload, hostDemo sends Load → Describe → Unload → Load, Natron unloads only at exit.
//! Load and Unload are therefore counted and idempotent, and nothing here belongs to an instance:
//! one clip is often rendered by many instances (render clones, one instance per frame).
use parking_lot::Mutex;

/// What the host told us on Load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostInfo {
    /// `kOfxPropName` of the host.
    pub name: String,
    /// Whether the host supports temporal clip access (`kOfxImageEffectPropTemporalClipAccess`).
    pub temporal_clip_access: bool,
}

/// Process-global plug-in state.
#[derive(Debug, Default)]
pub struct Global {
    /// Outstanding Loads (Load increments, Unload decrements, never below 0).
    pub loads: u32,
    /// The host, as seen on the last Load.
    pub host: HostInfo,
    /// Process-wide caches: the engine's models and frames live in `engine::service`, its
    /// memos (tokens, photos, files, face parsers) in `engine::registry`.
    pub caches: Caches,
}

/// Process-wide caches, keyed by content, shared by every instance.
#[derive(Debug, Default)]
pub struct Caches {
    /// How many times the caches were purged (diagnostics).
    pub purges: u64,
}

impl Caches {
    /// Drop everything cached: the engine's frame cache and every resource-registry memo, and
    /// the models (body models, face parsers) when no render is running (`engine::service`);
    /// the face pass's models and frames (`face_service`). Returns what the registry holds
    /// afterwards (only loaded models, and only while renders run).
    pub fn clear(&mut self) -> crate::engine::registry::RegistryStats {
        self.purges += 1;
        // `Service::purge` purges the process registry: memos always, models when idle.
        crate::engine::service::global().purge();
        crate::engine::face_service::global().purge();
        crate::engine::registry::global().stats()
    }
}

static GLOBAL: Mutex<Global> = Mutex::new(Global {
    loads: 0,
    host: HostInfo {
        name: String::new(),
        temporal_clip_access: false,
    },
    caches: Caches { purges: 0 },
});

/// Run `f` with the global state locked. Keep `f` short: render threads share this lock.
pub fn with<R>(f: impl FnOnce(&mut Global) -> R) -> R {
    f(&mut GLOBAL.lock())
}

impl Global {
    /// Count a Load; returns the new count.
    pub fn load(&mut self, host: HostInfo) -> u32 {
        self.loads = self.loads.saturating_add(1);
        self.host = host;
        self.loads
    }

    /// Count an Unload; on the last one, free the caches. Returns the new count. An Unload with
    /// no Load outstanding is ignored.
    pub fn unload(&mut self) -> u32 {
        if self.loads == 0 {
            return 0;
        }
        self.loads -= 1;
        if self.loads == 0 {
            self.caches.clear();
        }
        self.loads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_unload_are_counted_and_idempotent() {
        let mut g = Global::default();
        assert_eq!(g.unload(), 0, "Unload before Load is ignored");
        assert_eq!(g.caches.purges, 0);
        let host = HostInfo {
            name: "melt".into(),
            temporal_clip_access: false,
        };
        assert_eq!(g.load(host.clone()), 1);
        assert_eq!(g.load(host.clone()), 2);
        assert_eq!(g.load(host), 3);
        assert_eq!(g.unload(), 2);
        assert_eq!(
            g.caches.purges, 0,
            "caches live while a Load is outstanding"
        );
        assert_eq!(g.unload(), 1);
        assert_eq!(g.unload(), 0);
        assert_eq!(g.caches.purges, 1, "the last Unload frees the caches");
        assert_eq!(g.unload(), 0);
        assert_eq!(g.caches.purges, 1);
        assert_eq!(g.host.name, "melt");
    }
}
