// Package conformance runs SPIRE's own KeyManager conformance suite (pkg/server/plugin/keymanager/test,
// unmodified) against the frozen plugin binary, loaded the way spire-server loads an external KeyManager:
// a `plugins { KeyManager ... }` HCL block turned into plugin configs by SPIRE's catalog package, started
// and configured by catalog.Load, and reached through the KeyManager v1 facade.
//
// Inputs (both required; missing is a failure, not a skip):
//
//	AKM_PLUGIN_BINARY  the frozen binary (dist/aws-kms-keymanager-linux-amd64)
//	AKM_KMS_ENDPOINT   http://127.0.0.1:PORT of the KMS emulator
//
// The suite runs for every profile (which signature algorithms are declared unsupported) and both naming
// schemes. Every key manager the suite creates gets a naming space of its own (a key prefix, or a server
// id), so no key made by an earlier one can show up in a later one.
package conformance

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/hcl"
	"github.com/hashicorp/hcl/hcl/ast"
	"github.com/sirupsen/logrus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/spire-plugin-sdk/pluginsdk"
	metricsv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/hostservice/common/metrics/v1"
	"github.com/spiffe/spire/pkg/common/catalog"
	"github.com/spiffe/spire/pkg/common/hostservice/metricsservice"
	"github.com/spiffe/spire/pkg/common/telemetry"
	km_telemetry "github.com/spiffe/spire/pkg/common/telemetry/server/keymanager"
	"github.com/spiffe/spire/pkg/server/plugin/keymanager"
	keymanagertest "github.com/spiffe/spire/pkg/server/plugin/keymanager/test"
)

const (
	pluginName  = "aws_kms"
	trustDomain = "example.org"
	region      = "us-east-1"
	// The emulator accepts any credentials; these are tests/support/kms_emulator's DUMMY_* values.
	dummyAccessKeyID     = "testing"
	dummySecretAccessKey = "testing"
	// Loading covers the binary unpacking itself, starting Python and the first KMS calls.
	loadTimeout = 2 * time.Minute
)

type profile struct {
	name        string
	unsupported map[keymanager.KeyType][]x509.SignatureAlgorithm
}

var profiles = []profile{
	{
		// What SPIRE's built-in aws_kms declares unsupported in its own conformance run
		// (pkg/server/plugin/keymanager/awskms/awskms_test.go, v1.15.3).
		name: "builtin-profile",
		unsupported: map[keymanager.KeyType][]x509.SignatureAlgorithm{
			keymanager.ECP256: {x509.ECDSAWithSHA384, x509.ECDSAWithSHA512},
			keymanager.ECP384: {x509.ECDSAWithSHA256, x509.ECDSAWithSHA512},
		},
	},
	{
		// Nothing declared unsupported: every algorithm the suite knows, on every key type.
		name: "full",
	},
}

type scheme struct {
	name string
	// naming is the plugin_data line that puts a key manager in the naming space `space`.
	naming func(space string) string
}

var schemes = []scheme{
	{
		name:   "community",
		naming: func(space string) string { return fmt.Sprintf("key_prefix = %q", "CONFORMANCE/"+space+"/") },
	},
	{
		name:   "builtin",
		naming: func(space string) string { return fmt.Sprintf("key_identifier_value = %q", space) },
	},
}

func TestConformance(t *testing.T) {
	binary := requireEnv(t, "AKM_PLUGIN_BINARY")
	endpoint := requireEnv(t, "AKM_KMS_ENDPOINT")

	binary, err := filepath.Abs(binary)
	if err != nil {
		t.Fatalf("AKM_PLUGIN_BINARY: %v", err)
	}
	h := &harness{
		binary:   binary,
		checksum: fileSHA256(t, binary),
		runID:    randomHex(t, 4),
	}
	isolateEnvironment(t, endpoint)

	for _, p := range profiles {
		t.Run(p.name, func(t *testing.T) {
			for _, s := range schemes {
				t.Run(s.name, func(t *testing.T) {
					keymanagertest.Test(t, keymanagertest.Config{
						Create:                         func(t *testing.T) keymanager.KeyManager { return h.load(t, s) },
						UnsupportedSignatureAlgorithms: p.unsupported,
					})
				})
			}
		})
	}
}

type harness struct {
	binary   string
	checksum string
	runID    string
	loaded   atomic.Int64
}

// load starts one plugin process through SPIRE's catalog and returns its KeyManager, wrapped as
// spire-server wraps it. The plugin is unloaded (its process stopped) when t ends.
func (h *harness) load(t *testing.T, s scheme) keymanager.KeyManager {
	t.Helper()
	space := fmt.Sprintf("conformance-%s-%03d", h.runID, h.loaded.Add(1))
	config := fmt.Sprintf(`plugins {
    KeyManager %q {
        plugin_cmd = %q
        plugin_checksum = %q
        plugin_data {
            region = %q
            %s
        }
    }
}
`, pluginName, h.binary, h.checksum, region, s.naming(space))

	pluginConfigs := parsePluginConfigs(t, config)
	log, stopLog := newTestLogger(t)

	repo := new(repository)
	ctx, cancel := context.WithTimeout(context.Background(), loadTimeout)
	defer cancel()
	cat, err := catalog.Load(ctx, catalog.Config{
		Log:           log,
		PluginConfigs: pluginConfigs,
		CoreConfig:    catalog.CoreConfig{TrustDomain: spiffeid.RequireTrustDomainFromString(trustDomain)},
		// The one host service spire-server offers that needs nothing else of a server.
		HostServices: []pluginsdk.ServiceServer{
			metricsv1.MetricsServiceServer(metricsservice.V1(telemetry.Blackhole{})),
		},
	}, repo)
	if err != nil {
		stopLog()
		t.Fatalf("loading the plugin (%s, naming space %s) failed: %v", s.name, space, err)
	}
	t.Cleanup(func() {
		defer stopLog()
		if err := cat.Close(); err != nil {
			t.Errorf("unloading the plugin (naming space %s) failed: %v", space, err)
		}
	})

	km := repo.GetKeyManager()
	if km == nil {
		t.Fatalf("the catalog bound no KeyManager for plugin %q", pluginName)
	}
	t.Logf("loaded %s (naming scheme %s, naming space %s)", pluginName, s.name, space)
	return km_telemetry.WithMetrics(km, telemetry.Blackhole{})
}

// repository is the KeyManager part of spire-server's catalog repository (pkg/server/catalog), built from
// the same public pieces: exactly one KeyManager, bound through the v1 facade. It offers no built-ins, so
// only an external plugin (plugin_cmd) can load.
type repository struct {
	keyManagers keyManagerRepository
}

func (r *repository) Plugins() map[string]catalog.PluginRepo {
	return map[string]catalog.PluginRepo{"KeyManager": &r.keyManagers}
}

func (r *repository) Services() []catalog.ServiceRepo { return nil }

func (r *repository) GetKeyManager() keymanager.KeyManager { return r.keyManagers.GetKeyManager() }

type keyManagerRepository struct {
	keymanager.Repository
}

func (r *keyManagerRepository) Binder() any { return r.SetKeyManager }

func (r *keyManagerRepository) Constraints() catalog.Constraints { return catalog.ExactlyOne() }

func (r *keyManagerRepository) Versions() []catalog.Version {
	return []catalog.Version{keyManagerV1{}}
}

func (r *keyManagerRepository) BuiltIns() []catalog.BuiltIn { return nil }

type keyManagerV1 struct{}

func (keyManagerV1) New() catalog.Facade { return new(keymanager.V1) }
func (keyManagerV1) Deprecated() bool    { return false }

// parsePluginConfigs reads a server.conf fragment holding a `plugins` block as spire-server's run command
// does: HCL (version 1) decoding, then the catalog's own plugin config parser.
func parsePluginConfigs(t *testing.T, text string) catalog.PluginConfigs {
	t.Helper()
	var root struct {
		Plugins ast.Node `hcl:"plugins"`
	}
	if err := hcl.Decode(&root, text); err != nil {
		t.Fatalf("parsing the plugins block: %v\n%s", err, text)
	}
	configs, err := catalog.PluginConfigsFromHCLNode(root.Plugins)
	if err != nil {
		t.Fatalf("reading the plugin configs: %v\n%s", err, text)
	}
	if len(configs) != 1 || !configs[0].IsExternal() || configs[0].Checksum == "" {
		t.Fatalf("expected one external plugin with a checksum, got %+v", configs)
	}
	return configs
}

// isolateEnvironment gives the test process, and so every plugin it starts, an environment with nothing
// AWS, Python or proxy from outside, the emulator as the AWS endpoint, dummy credentials and a short private
// TMPDIR (unix socket paths must stay under 108 bytes; the binary unpacks itself there).
func isolateEnvironment(t *testing.T, endpoint string) {
	t.Helper()
	base := os.TempDir()
	if len(base) > 32 {
		base = "/tmp"
	}
	tmpdir, err := os.MkdirTemp(base, "akm-")
	if err != nil {
		t.Fatalf("creating the plugins' TMPDIR: %v", err)
	}
	// Registered first, so it runs after every plugin has been unloaded.
	t.Cleanup(func() {
		if err := os.RemoveAll(tmpdir); err != nil {
			t.Errorf("removing %s: %v", tmpdir, err)
		}
	})

	for _, entry := range os.Environ() {
		name, _, _ := strings.Cut(entry, "=")
		upper := strings.ToUpper(name)
		if strings.HasPrefix(upper, "AWS_") || strings.HasPrefix(upper, "PYTHON") ||
			strings.HasSuffix(upper, "_PROXY") {
			t.Setenv(name, "") // restores the old value at cleanup
			if err := os.Unsetenv(name); err != nil {
				t.Fatalf("unsetting %s: %v", name, err)
			}
		}
	}
	for name, value := range map[string]string{
		"AWS_ENDPOINT_URL":            endpoint,
		"AWS_ACCESS_KEY_ID":           dummyAccessKeyID,
		"AWS_SECRET_ACCESS_KEY":       dummySecretAccessKey,
		"AWS_EC2_METADATA_DISABLED":   "true",
		"AWS_CONFIG_FILE":             os.DevNull,
		"AWS_SHARED_CREDENTIALS_FILE": os.DevNull,
		"NO_PROXY":                    "127.0.0.1,localhost",
		"TMPDIR":                      tmpdir,
	} {
		t.Setenv(name, value)
	}
}

// newTestLogger is the catalog's logger (the plugin's stderr lines arrive through it) writing to t's log.
// The returned stop drops whatever is logged afterwards, when t may be complete.
func newTestLogger(t *testing.T) (logrus.FieldLogger, func()) {
	w := &testLogWriter{t: t}
	log := logrus.New()
	log.SetOutput(w)
	log.SetLevel(logrus.DebugLevel)
	log.SetFormatter(&logrus.TextFormatter{DisableColors: true, FullTimestamp: true})
	return log, w.stop
}

type testLogWriter struct {
	mu      sync.Mutex
	t       *testing.T
	stopped bool
}

var _ io.Writer = (*testLogWriter)(nil)

func (w *testLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testLogWriter) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
}

func requireEnv(t *testing.T, name string) string {
	t.Helper()
	value := os.Getenv(name)
	if value == "" {
		t.Fatalf("%s is not set: the conformance suite needs it (see the package comment)", name)
	}
	return value
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("the plugin binary: %v", err)
	}
	defer f.Close()
	sum := sha256.New()
	if _, err := io.Copy(sum, f); err != nil {
		t.Fatalf("reading the plugin binary: %v", err)
	}
	return hex.EncodeToString(sum.Sum(nil))
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random: %v", err)
	}
	return hex.EncodeToString(b)
}
