package retained

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// file builds a persistence file of the given version from chunks.
func file(version uint32, chunks ...[]byte) []byte {
	b := append([]byte{}, magic...)
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, version)
	for _, c := range chunks {
		b = append(b, c...)
	}
	return b
}

func chunkOf(kind uint32, body []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, kind)
	b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
	return append(b, body...)
}

func id(n byte) []byte { return []byte{n, 0, 0, 0, 0, 0, 0, 0} }

func cfg(clean bool) []byte {
	body := make([]byte, 16)
	if clean {
		body[8] = 1
	}
	body[9] = 8
	return chunkOf(chunkCfg, body)
}

func store(n byte, topic string) []byte {
	body := append(id(n), make([]byte, msgStoreSize-idLen)...)
	binary.BigEndian.PutUint16(body[26:], uint16(len(topic)))
	body = append(body, topic...)
	return chunkOf(chunkMsgStore, append(body, "payload"...))
}

func retain(n byte) []byte    { return chunkOf(chunkRetain, id(n)) }
func clientMsg(n byte) []byte { return chunkOf(chunkClientMsg, append(id(n), make([]byte, 8)...)) }
func client(name string) []byte {
	return chunkOf(6, append(make([]byte, 24), name...))
}

func TestStrip(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      []byte
		want    []byte
		st      Stripped
		wantErr string
	}{
		{
			name: "retained dropped, queued kept",
			in: file(6, cfg(true), store(1, "r/1"), store(2, "r/2"), store(3, "q"), client("s"), clientMsg(3),
				retain(1), retain(2), retain(3)),
			want: file(6, cfg(true), store(3, "q"), client("s"), clientMsg(3)),
			st:   Stripped{Retained: 3, Stores: 2, Topics: []string{"r/1", "r/2"}, Clean: true},
		},
		{
			name: "autosaved, version 5",
			in:   file(5, cfg(false), store(1, "a/b"), retain(1)),
			want: file(5, cfg(false)),
			st:   Stripped{Retained: 1, Stores: 1, Topics: []string{"a/b"}},
		},
		{
			name: "nothing retained",
			in:   file(6, cfg(true), store(3, "q"), client("s"), clientMsg(3)),
			want: file(6, cfg(true), store(3, "q"), client("s"), clientMsg(3)),
			st:   Stripped{Clean: true},
		},
		{name: "not mosquitto's", in: []byte("hello, this is not a database at all"), wantErr: "no magic"},
		{name: "version 4", in: file(4, cfg(true)), wantErr: "version 4"},
		{name: "truncated header", in: append(file(6, cfg(true)), 0, 0, 0), wantErr: "truncated chunk header"},
		{name: "chunk longer than the file", in: file(6, cfg(true))[:headerLen+12], wantErr: "claims 16 bytes"},
		{name: "retain chunk without an id", in: file(6, chunkOf(chunkRetain, []byte{1, 2})), wantErr: "shorter than a message id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, st, err := strip(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, tc.want) {
				t.Errorf("out\n%x\nwant\n%x", out, tc.want)
			}
			if st.Retained != tc.st.Retained || st.Stores != tc.st.Stores || st.Clean != tc.st.Clean ||
				strings.Join(st.Topics, ",") != strings.Join(tc.st.Topics, ",") {
				t.Errorf("stripped %+v, want %+v", st, tc.st)
			}
		})
	}
}

func TestStripFile(t *testing.T) {
	dir := t.TempDir()
	if st, err := Strip(filepath.Join(dir, "missing.db")); err != nil || st.Retained != 0 {
		t.Errorf("missing file: %+v %v, want nothing and no error", st, err)
	}
	p := filepath.Join(dir, "mosquitto.db")
	os.WriteFile(p, file(6, cfg(true), store(1, "r"), retain(1)), 0o600)
	st, err := Strip(p)
	if err != nil || st.Retained != 1 {
		t.Fatalf("%+v %v", st, err)
	}
	fi, _ := os.Stat(p)
	b, _ := os.ReadFile(p)
	if fi.Mode().Perm() != 0o600 || !bytes.Equal(b, file(6, cfg(true))) {
		t.Errorf("mode %v, content %x", fi.Mode(), b)
	}
	// A file it cannot read is left alone.
	bad := []byte("not a database")
	os.WriteFile(p, bad, 0o600)
	if _, err := Strip(p); err == nil || !strings.Contains(err.Error(), "left as it is") {
		t.Errorf("err %v", err)
	}
	if b, _ := os.ReadFile(p); !bytes.Equal(b, bad) {
		t.Error("an unreadable file was changed")
	}
}

// FuzzStrip: any input is refused or stripped, never a panic, and what
// comes out holds no retained message and strips to itself.
func FuzzStrip(f *testing.F) {
	f.Add(file(6, cfg(true), store(1, "r/1"), store(3, "q"), client("s"), clientMsg(3), retain(1), retain(3)))
	f.Add(file(5, cfg(false)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		out, _, err := strip(b)
		if err != nil {
			return
		}
		again, st, err := strip(out)
		if err != nil || st.Retained != 0 || !bytes.Equal(again, out) {
			t.Fatalf("stripped file strips again: %+v %v", st, err)
		}
	})
}
