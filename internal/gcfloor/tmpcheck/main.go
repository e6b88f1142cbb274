package main

import (
	"fmt"
	"runtime"
	"runtime/metrics"
	"time"

	"github.com/imapgw/imapgw/internal/gcfloor"
)

var sink []byte

func main() {
	stop := gcfloor.Start(16 << 20)
	defer stop()
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}, {Name: "/gc/heap/goal:bytes"}, {Name: "/gc/heap/live:bytes"}}
	for i := 0; i < 5; i++ {
		for j := 0; j < 20000; j++ {
			sink = make([]byte, 1000)
		}
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		metrics.Read(s)
		fmt.Println("numgc", m.NumGC, "gogc", s[0].Value.Uint64(), "goal", s[1].Value.Uint64()>>20, "live", s[2].Value.Uint64()>>10, "KB heapalloc", m.HeapAlloc>>20)
		time.Sleep(100 * time.Millisecond)
	}
}
