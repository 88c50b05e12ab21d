package retained

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/mqha/mqha/internal/atomicfile"
)

// mosquitto 2.0's persistence file (src/persist.h, persist_write_v5.c):
// a 15-byte magic, a CRC (unused, 0) and the format version, then chunks,
// each an 8-byte header (type and length, network order) and its body.
// Versions 5 and 6 share the chunk header; 6 is what 2.0 writes.
var magic = []byte{0x00, 0xB5, 0x00, 'm', 'o', 's', 'q', 'u', 'i', 't', 't', 'o', ' ', 'd', 'b'}

const (
	headerLen = 15 + 4 + 4

	chunkCfg       = 1
	chunkMsgStore  = 2
	chunkClientMsg = 3
	chunkRetain    = 4

	// A stored message's id (dbid_t, 8 bytes, host order) opens the
	// bodies of the message store, client message and retain chunks; the
	// stored message's fixed part is 32 bytes, then its source id, source
	// username and topic.
	idLen        = 8
	msgStoreSize = 32
)

// Stripped is what Strip removed from a persistence file.
type Stripped struct {
	Retained int      // retained messages dropped
	Stores   int      // stored messages dropped with them (no session queued them)
	Topics   []string // the dropped retained topics, at most 20, for the log
	Clean    bool     // the file was saved at a clean shutdown (else by autosave)
}

// Strip drops every retained message from mosquitto's persistence file at
// path, and the stored messages that only they held, keeping the sessions,
// their subscriptions and their queued messages. It rewrites the file
// atomically with its owner and mode, and only when it held a retained
// message. A missing or empty file is not an error (nothing to strip); a
// file it cannot read as mosquitto 2.0's format is left as it is, with an
// error that says why.
func Strip(path string) (Stripped, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) || err == nil && len(b) == 0 {
		return Stripped{}, nil
	}
	if err != nil {
		return Stripped{}, err
	}
	out, st, err := strip(b)
	if err != nil {
		return Stripped{}, fmt.Errorf("%s: %w; left as it is", path, err)
	}
	if st.Retained == 0 {
		return st, nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return Stripped{}, err
	}
	if err := atomicfile.WriteLike(path, out, fi); err != nil {
		return Stripped{}, fmt.Errorf("rewrite %s without its retained messages: %w", path, err)
	}
	return st, nil
}

type chunk struct {
	kind uint32
	body []byte
	raw  []byte // header and body, as read
}

// strip returns the file without its retained messages.
func strip(b []byte) ([]byte, Stripped, error) {
	var st Stripped
	if len(b) < headerLen || !bytes.Equal(b[:15], magic) {
		return nil, st, errors.New("not a mosquitto persistence file (no magic)")
	}
	if v := binary.BigEndian.Uint32(b[19:23]); v != 5 && v != 6 {
		return nil, st, fmt.Errorf("persistence format version %d, this reads 5 and 6 (mosquitto 2.0)", v)
	}
	var chunks []chunk
	for off := headerLen; off < len(b); {
		if len(b)-off < 8 {
			return nil, st, fmt.Errorf("truncated chunk header at byte %d", off)
		}
		kind := binary.BigEndian.Uint32(b[off:])
		n := int(binary.BigEndian.Uint32(b[off+4:]))
		if n > len(b)-off-8 {
			return nil, st, fmt.Errorf("chunk of type %d at byte %d claims %d bytes, %d remain", kind, off, n, len(b)-off-8)
		}
		chunks = append(chunks, chunk{kind: kind, body: b[off+8 : off+8+n], raw: b[off : off+8+n]})
		off += 8 + n
	}
	retained := map[string]bool{}
	queued := map[string]bool{}
	for _, c := range chunks {
		switch c.kind {
		case chunkRetain, chunkClientMsg, chunkMsgStore:
			if len(c.body) < idLen {
				return nil, st, fmt.Errorf("chunk of type %d is %d bytes, shorter than a message id", c.kind, len(c.body))
			}
		}
		switch c.kind {
		case chunkCfg:
			// last_db_id (8 bytes), then the shutdown flag.
			st.Clean = len(c.body) > 8 && c.body[8] != 0
		case chunkRetain:
			retained[string(c.body[:idLen])] = true
		case chunkClientMsg:
			queued[string(c.body[:idLen])] = true
		}
	}
	st.Retained = len(retained)
	out := make([]byte, 0, len(b))
	out = append(out, b[:headerLen]...)
	for _, c := range chunks {
		id := ""
		if c.kind == chunkRetain || c.kind == chunkMsgStore {
			id = string(c.body[:idLen])
		}
		switch {
		case c.kind == chunkRetain:
			continue
		case c.kind == chunkMsgStore && retained[id] && !queued[id]:
			st.Stores++
			if len(st.Topics) < 20 {
				st.Topics = append(st.Topics, storedTopic(c.body))
			}
			continue
		}
		out = append(out, c.raw...)
	}
	return out, st, nil
}

// storedTopic reads a stored message's topic, "?" when the chunk is too
// short to hold it (the file is only being copied, so this is for the log).
func storedTopic(body []byte) string {
	if len(body) < msgStoreSize {
		return "?"
	}
	srcID := int(binary.BigEndian.Uint16(body[22:]))
	srcUser := int(binary.BigEndian.Uint16(body[24:]))
	topic := int(binary.BigEndian.Uint16(body[26:]))
	start := msgStoreSize + srcID + srcUser
	if start+topic > len(body) {
		return "?"
	}
	return string(body[start : start+topic])
}
