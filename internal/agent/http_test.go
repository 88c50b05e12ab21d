package agent

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

// The webhook: a signed push is accepted once; a replay, an oversized
// body, a bad signature and a guessable secret are refused.
func TestWebhook(t *testing.T) {
	h := newHarness(t, "broker1", "", map[string]string{"c1": ""})
	secretFile := filepath.Join(t.TempDir(), "secret")
	h.a.hook.setFile(secretFile)
	post := func(body []byte, secret, delivery string) int {
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write(body)
		req := httptest.NewRequest("POST", "/hook", bytes.NewReader(body))
		req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
		if delivery != "" {
			req.Header.Set("X-GitHub-Delivery", delivery)
		}
		w := httptest.NewRecorder()
		h.a.handler().ServeHTTP(w, req)
		return w.Code
	}
	os.WriteFile(secretFile, []byte("short\n"), 0o600)
	if c := post([]byte("{}"), "short", "d0"); c != http.StatusServiceUnavailable {
		t.Errorf("a 5-byte secret: %d, want 503", c)
	}
	good := "0123456789abcdef0123456789abcdef"
	os.WriteFile(secretFile, []byte(good+"\n"), 0o600)
	for _, tt := range []struct {
		name     string
		body     []byte
		secret   string
		delivery string
		want     int
	}{
		{"signed", []byte(`{"ref":"refs/heads/main"}`), good, "d1", http.StatusAccepted},
		{"replayed", []byte(`{"ref":"refs/heads/main"}`), good, "d1", http.StatusConflict},
		{"another delivery", []byte(`{"ref":"refs/heads/main"}`), good, "d2", http.StatusAccepted},
		{"bad signature", []byte(`{}`), "not-the-secret-at-all!", "d3", http.StatusUnauthorized},
		{"over 1 MiB", bytes.Repeat([]byte("x"), 1<<20+1), good, "d4", http.StatusRequestEntityTooLarge},
	} {
		if c := post(tt.body, tt.secret, tt.delivery); c != tt.want {
			t.Errorf("%s: %d, want %d", tt.name, c, tt.want)
		}
	}
	// The accepted deliveries came before the loop took any: one pull.
	if n := len(h.a.mail); n != 1 {
		t.Errorf("%d requests in the loop's mailbox after 2 deliveries, want them coalesced into 1", n)
	}
}
