package main

// Placeholder until the benchmark lands (issue 4).
func runBench(args []string) int { panic("not yet") }
