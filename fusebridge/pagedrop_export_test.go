package fusebridge

// WriteDropsAnswered counts WRITEs answered before the invalidation of the
// pages they may have left stale completed (pagedrop.go).
func WriteDropsAnswered() int64 { return writeDropsAnswered.Load() }

// ZeroedWrites counts refused WRITEs whose bytes the kernel's truncation
// race zeroed (pagedrop.go).
func ZeroedWrites() int64 { return zeroedWrites.Load() }
