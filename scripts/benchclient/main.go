// Command benchclient calls a running KeyManager plugin over its socket as SPIRE Server does: with
// grpc-go and the plugin SDK's generated client. scripts/bench.py starts the plugin, then runs this for
// each block of calls, so that the latencies it reports are the ones SPIRE would see, and the caller's
// own CPU is that of a Go client rather than Python's.
//
//	benchclient -socket PATH -method sign|getpublickey|getpublickeys [-key ID] [-count N] [-callers C]
//
// Two baselines, each what SPIRE does without the plugin:
//
//	benchclient -method awssdk-sign -endpoint URL -key ID [-algorithm A]   KMS Sign with aws-sdk-go-v2,
//	    from the caller's own process, as SPIRE's built-in aws_kms signs
//	benchclient -serve -socket PATH [-endpoint URL -key ID -algorithm A]   until killed, a grpc-go
//	    KeyManager answering GetPublicKey(s) from memory, and SignData with aws-sdk-go-v2 (key ID, whatever
//	    the request names): the least a plugin's answer can cost through a socket on this machine
//
// A client prints one JSON line: {"latencies": [seconds, ...], "cpu_seconds": its own CPU for them}.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	kmstypes "github.com/aws/aws-sdk-go-v2/service/kms/types"
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
	serve := flag.Bool("serve", false, "serve the in-memory KeyManager on -socket instead of calling")
	endpoint := flag.String("endpoint", "", "the KMS endpoint URL, for awssdk-sign")
	algorithm := flag.String("algorithm", "ECDSA_SHA_256", "the signing algorithm, for awssdk-sign")
	flag.Parse()
	var err error
	if *serve {
		err = serveFromMemory(*socket, awsSDKSigner(*endpoint, *keyID, *algorithm))
	} else {
		var call func(context.Context) error
		if *method == "awssdk-sign" {
			call = awsSDKSign(*endpoint, *keyID, *algorithm)
		} else {
			var conn *grpc.ClientConn
			conn, err = grpc.NewClient("unix://"+*socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err == nil {
				defer conn.Close()
				call = pluginCall(keymanagerv1.NewKeyManagerClient(conn), *method, *keyID)
			}
		}
		if err == nil {
			err = run(call, *count, *callers, *warmup)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchclient:", err)
		os.Exit(1)
	}
}

func run(call func(context.Context) error, count, callers, warmup int) error {
	if _, err := timed(call, warmup, callers); err != nil {
		return err
	}
	before := cpuSeconds()
	latencies, err := timed(call, count, callers)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]any{"latencies": latencies, "cpu_seconds": cpuSeconds() - before})
}

func cpuSeconds() float64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano()).Seconds()
}

// awsSDKSigner signs a digest with KMS as SPIRE's built-in aws_kms does: an aws-sdk-go-v2 client (static
// test credentials; the emulator does not check them).
func awsSDKSigner(endpoint, keyID, algorithm string) func(context.Context, []byte) ([]byte, error) {
	client := kms.New(kms.Options{
		Region:       "us-east-1",
		BaseEndpoint: aws.String(endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider("AKIAIOSFODNN7EXAMPLE", "benchmark", ""),
	})
	return func(ctx context.Context, digest []byte) ([]byte, error) {
		out, err := client.Sign(ctx, &kms.SignInput{
			KeyId:            aws.String(keyID),
			Message:          digest,
			MessageType:      kmstypes.MessageTypeDigest,
			SigningAlgorithm: kmstypes.SigningAlgorithmSpec(algorithm),
		})
		if err != nil {
			return nil, err
		}
		return out.Signature, nil
	}
}

// awsSDKSign signs from the caller's own process, as the built-in does.
func awsSDKSign(endpoint, keyID, algorithm string) func(context.Context) error {
	sign := awsSDKSigner(endpoint, keyID, algorithm)
	digest := sha256.Sum256([]byte("benchmark"))
	return func(ctx context.Context) error {
		_, err := sign(ctx, digest[:])
		return err
	}
}

// inMemory answers GetPublicKey(s) with one EC P-256 key's worth of bytes, as a plugin with its keys
// cached would, and signs with one KMS key.
type inMemory struct {
	keymanagerv1.UnimplementedKeyManagerServer
	key  *keymanagerv1.PublicKey
	sign func(context.Context, []byte) ([]byte, error)
}

func (m inMemory) SignData(ctx context.Context, req *keymanagerv1.SignDataRequest) (*keymanagerv1.SignDataResponse, error) {
	signature, err := m.sign(ctx, req.Data)
	if err != nil {
		return nil, err
	}
	return &keymanagerv1.SignDataResponse{Signature: signature, KeyFingerprint: m.key.Fingerprint}, nil
}

func (m inMemory) GetPublicKey(context.Context, *keymanagerv1.GetPublicKeyRequest) (*keymanagerv1.GetPublicKeyResponse, error) {
	return &keymanagerv1.GetPublicKeyResponse{PublicKey: m.key}, nil
}

func (m inMemory) GetPublicKeys(context.Context, *keymanagerv1.GetPublicKeysRequest) (*keymanagerv1.GetPublicKeysResponse, error) {
	return &keymanagerv1.GetPublicKeysResponse{PublicKeys: []*keymanagerv1.PublicKey{m.key}}, nil
}

func serveFromMemory(socket string, sign func(context.Context, []byte) ([]byte, error)) error {
	listener, err := net.Listen("unix", socket)
	if err != nil {
		return err
	}
	server := grpc.NewServer()
	keymanagerv1.RegisterKeyManagerServer(server, inMemory{key: &keymanagerv1.PublicKey{
		Id:          "bench-EC_P256",
		Type:        keymanagerv1.KeyType_EC_P256,
		PkixData:    make([]byte, 91),
		Fingerprint: fmt.Sprintf("%x", sha256.Sum256(nil)),
	}, sign: sign})
	return server.Serve(listener)
}

func pluginCall(client keymanagerv1.KeyManagerClient, method, keyID string) func(context.Context) error {
	digest := sha256.Sum256([]byte("benchmark"))
	return func(ctx context.Context) error {
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
