// Command benchclient calls a running KeyManager plugin over its socket as SPIRE Server does: with
// grpc-go and the plugin SDK's generated client. scripts/bench.py starts the plugin, then runs this for
// each block of calls, so that the latencies it reports are the ones SPIRE would see, and the caller's
// own CPU is that of a Go client rather than Python's.
//
//	benchclient -socket PATH -method sign|getpublickey|getpublickeys [-key ID] [-count N] [-callers C]
//
// It prints one JSON line: {"latencies": [seconds, ...]}.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync"
	"time"

	keymanagerv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/keymanager/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func main() {
	socket := flag.String("socket", "", "the plugin's unix socket (from its handshake line)")
	method := flag.String("method", "sign", "sign, getpublickey or getpublickeys")
	keyID := flag.String("key", "", "key id, for sign and getpublickey")
	count := flag.Int("count", 100, "calls to time")
	callers := flag.Int("callers", 1, "concurrent callers")
	warmup := flag.Int("warmup", 0, "untimed calls first")
	flag.Parse()
	if err := run(*socket, *method, *keyID, *count, *callers, *warmup); err != nil {
		fmt.Fprintln(os.Stderr, "benchclient:", err)
		os.Exit(1)
	}
}

func run(socket, method, keyID string, count, callers, warmup int) error {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := keymanagerv1.NewKeyManagerClient(conn)
	digest := sha256.Sum256([]byte("benchmark"))
	call := func(ctx context.Context) error {
		var err error
		switch method {
		case "sign":
			_, err = client.SignData(ctx, &keymanagerv1.SignDataRequest{
				KeyId:      keyID,
				Data:       digest[:],
				SignerOpts: &keymanagerv1.SignDataRequest_HashAlgorithm{HashAlgorithm: keymanagerv1.HashAlgorithm_SHA256},
			})
		case "getpublickey":
			_, err = client.GetPublicKey(ctx, &keymanagerv1.GetPublicKeyRequest{KeyId: keyID})
		case "getpublickeys":
			_, err = client.GetPublicKeys(ctx, &keymanagerv1.GetPublicKeysRequest{})
		default:
			err = fmt.Errorf("unknown method %q", method)
		}
		return err
	}
	if _, err := timed(call, warmup, callers); err != nil {
		return err
	}
	latencies, err := timed(call, count, callers)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(map[string][]float64{"latencies": latencies})
}

// timed makes count calls from callers goroutines, each with SPIRE's usual deadline, and returns each
// call's latency in seconds.
func timed(call func(context.Context) error, count, callers int) ([]float64, error) {
	latencies := make([]float64, 0, count)
	var mu sync.Mutex
	var firstErr error
	next := make(chan struct{}, count)
	for i := 0; i < count; i++ {
		next <- struct{}{}
	}
	close(next)
	var wg sync.WaitGroup
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				started := time.Now()
				err := call(ctx)
				elapsed := time.Since(started).Seconds()
				cancel()
				mu.Lock()
				latencies = append(latencies, elapsed)
				if err != nil && firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return latencies, firstErr
}
