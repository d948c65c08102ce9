//! Plugins built against API 1.3, on this host: checked against the frozen 1.3 vtable and root
//! module, changes, capabilities, object stats and requests crossing as they are (unchanged
//! since 1.3), their outcomes converted back (1.3 has no unsupported with a reason).

converted!(
    v1_3,
    capabilities: v1_3::capabilities,
    object_stats: |plugin, kind| plugin.object_stats(kind)
);
