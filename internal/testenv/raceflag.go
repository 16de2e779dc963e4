package testenv

// RaceEnabled reports whether the tests were built with -race, for tests
// that bound their work by it.
const RaceEnabled = raceEnabled
