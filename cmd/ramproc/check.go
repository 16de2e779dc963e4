package main

// Placeholder until the conformance tester lands (issue 3).
func runCheck(args []string) int { panic("not yet") }
