package fusebridge

// PlusFirst is how many children at the start of a listing a no-open
// connection's READDIRPLUS looks up even if the kernel does not know them
// (dirnode.go).
const PlusFirst = plusFirst
