//! flink-gitops
