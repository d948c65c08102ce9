//! Plugins built against API 1.1, on this host: checked against the frozen 1.1 types,
//! changes converted into them before each call (kinds added since never reach them), their
//! capabilities and requests converted back.

converted!(v1_1);
