package fusebridge

// WriteDropTimeouts counts WRITEs answered before the invalidation of the
// pages they may have left stale completed (pagedrop.go).
func WriteDropTimeouts() int64 { return writeDropTimeouts.Load() }
