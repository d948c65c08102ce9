//! Plugins built against API 1.2, on this host: checked against the frozen 1.2 types,
//! changes converted into them before each call (the tc kinds, added in 1.3, never reach
//! them), their capabilities (no tc filter), object stats and requests converted back.

converted!(
    v1_2,
    capabilities: v1_2::capabilities,
    object_stats: |plugin, kind| plugin
        .object_stats(kind)
        .map(|v| v.into_iter().map(v1_2::object_stats).collect())
);
