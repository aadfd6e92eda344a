"""Our MetaSchedule templates: TE computes, the blocked-layout lowering, CPU and CUDA rules."""
