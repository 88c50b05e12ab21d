//go:build e2e

package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A holder is this test binary run again as a child (MQHA_E2E_HOLDER set):
// it opens MQHA_E2E_HOLD_PER idle mutual-TLS MQTT clients through the VIP
// from each of the source addresses in MQHA_E2E_HOLD_SRCS, pings each every
// minute, prints its progress, and on end of stdin prints how many the
// cluster dropped. One process holds at most what this host's descriptor
// limit allows (20,000 here), so a test holds more with several.
func holderMain() int {
	srcs := strings.Split(os.Getenv("MQHA_E2E_HOLD_SRCS"), ",")
	per, _ := strconv.Atoi(os.Getenv("MQHA_E2E_HOLD_PER"))
	pki := os.Getenv("MQHA_E2E_HOLD_PKI")
	ca, err := os.ReadFile(pki + "/clients/ca.crt")
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair(pki+"/clients/lab-client.crt", pki+"/clients/lab-client.key")
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	tc := &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
		ClientSessionCache: tls.NewLRUClientSessionCache(64)}
	var connected, failed, dropped atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	brokers := sync.Map{}
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Second):
			}
			fmt.Printf("progress connected %d failed %d dropped %d\n", connected.Load(), failed.Load(), dropped.Load())
		}
	}()
	for s, src := range srcs {
		for j := range per {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, broker, err := dialFrom(tc, src, fmt.Sprintf("h%d-%d-%d", os.Getpid(), s, j), 30*time.Second)
				<-sem
				if err != nil {
					failed.Add(1)
					return
				}
				connected.Add(1)
				n, _ := brokers.LoadOrStore(broker, new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
				buf := make([]byte, 64)
				for {
					c.SetReadDeadline(time.Now().Add(time.Minute))
					_, err := c.Read(buf)
					select {
					case <-stop:
						c.Close()
						return
					default:
					}
					if e, ok := err.(interface{ Timeout() bool }); ok && e.Timeout() {
						c.SetWriteDeadline(time.Now().Add(10 * time.Second))
						if _, err = c.Write([]byte{0xC0, 0}); err == nil {
							continue
						}
					}
					if err == nil {
						continue
					}
					dropped.Add(1)
					c.Close()
					return
				}
			}()
		}
	}
	// Wait for the connects, then hold until stdin ends.
	for len(sem) > 0 {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
	var per0 []string
	brokers.Range(func(k, v any) bool {
		per0 = append(per0, fmt.Sprintf("%s=%d", k, v.(*atomic.Int64).Load()))
		return true
	})
	fmt.Printf("ramped connected %d failed %d brokers %s\n", connected.Load(), failed.Load(), strings.Join(per0, ","))
	io.Copy(io.Discard, bufio.NewReader(os.Stdin))
	fmt.Printf("done connected %d failed %d dropped %d\n", connected.Load(), failed.Load(), dropped.Load())
	close(stop)
	return 0
}
