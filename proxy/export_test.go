package proxy

// ParkedRelays is the number of relay directions parked without a goroutine
// (park_linux.go), for the tests of parking.
func ParkedRelays() int { return parkedRelays() }

// JumboChunks is how many jumbo relay chunks were taken so far, and
// JumbosInFlight how many are taken now (relay.go).
func JumboChunks() int64  { return jumboTaken.Load() }
func JumbosInFlight() int { return int(jumbos.Load()) }
