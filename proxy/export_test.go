package proxy

// ParkedRelays is the number of relay directions parked without a goroutine
// (park_linux.go), for the tests of parking.
func ParkedRelays() int { return parkedRelays() }
