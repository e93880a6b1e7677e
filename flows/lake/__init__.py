"""The lake: one filesystem abstraction (fs), every layout path (layout), storage schemes
(storage), the lease that keeps one writer, atomic commits and the publish pointer."""
