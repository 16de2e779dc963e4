package main

// Placeholder until the mount command lands.
func runMount(args []string) int { panic("not yet") }
