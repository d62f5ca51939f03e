// Command franz-compat is the client-compatibility check of sluice with franz-go
// (github.com/twmb/franz-go: kgo and kadm).
//
// Usage: franz-compat HOST:PORT
//
// Creates the topic "franz-compat" (3 partitions) with kadm and checks the cluster
// metadata (one broker, via Metadata and DescribeCluster), produces 300 keyed records
// with headers per codec (none, zstd, snappy, lz4, gzip) with kgo's default idempotent
// producer (InitProducerId, acks=all, ProduceSync), reads everything back with a group-less consumer
// (ConsumePartitions, AtStart) and once more from the middle of every partition, and
// checks every record (key, value, headers, timestamp, codec), the per-partition
// order and the kadm offset look-ups. Uses only what sluice implements: no consumer
// group.
//
// Exits 0 when every check passed, 1 otherwise (each mismatch is printed), 2 on a
// usage error. FRANZ_COMPAT_LOG=error|warn|info|debug sets kgo's log level on
// stderr (default warn).
package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"runtime/debug"
	"sort"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"
)

const (
	topic           = "franz-compat"
	partitions      = 3
	recordsPerRound = 300
	opTimeout       = 30 * time.Second
	maxReported     = 20
)

type codec struct {
	name  string
	codec kgo.CompressionCodec
	attr  uint8 // the codec's id in the batch attributes
}

// The first round is uncompressed; each later one uses a codec.
var codecs = []codec{
	{"none", kgo.NoCompression(), 0},
	{"zstd", kgo.ZstdCompression(), 4},
	{"snappy", kgo.SnappyCompression(), 2},
	{"lz4", kgo.Lz4Compression(), 3},
	{"gzip", kgo.GzipCompression(), 1},
}

// ---------------------------------------------------------------- reporting

var (
	failures []string
	reported int
)

func fail(format string, args ...any) {
	reported++
	switch {
	case reported <= maxReported:
		failures = append(failures, fmt.Sprintf(format, args...))
	case reported == maxReported+1:
		failures = append(failures, "(further mismatches not shown)")
	}
}

func check(ok bool, format string, args ...any) bool {
	if !ok {
		fail(format, args...)
	}
	return ok
}

func say(format string, args ...any) { fmt.Printf("go: "+format+"\n", args...) }

// fatal reports what has failed so far plus msg and exits 1.
func fatal(format string, args ...any) {
	fail(format, args...)
	finish(1)
}

var started = time.Now()

func finish(code int) {
	if len(failures) > 0 {
		code = 1
		say("%d check(s) FAILED:", reported)
		for _, f := range failures {
			fmt.Printf("go:   - %s\n", f)
		}
	}
	verdict := "ok"
	if code != 0 {
		verdict = "FAILED"
	}
	say("franz-go compat %s in %.1f s", verdict, time.Since(started).Seconds())
	os.Exit(code)
}

// ---------------------------------------------------------------- records

type sent struct {
	round     int
	idx       int
	codec     codec
	key       []byte
	value     []byte // nil: a null value (tombstone)
	headers   []kgo.RecordHeader
	ts        time.Time
	partition int32
	offset    int64
}

func (s *sent) String() string {
	return fmt.Sprintf("%s record %d (%s-%d@%d)", s.codec.name, s.idx, topic, s.partition, s.offset)
}

// makeRecord: keys spread over the partitions by kgo's default (murmur2) partitioner;
// values include empty, null, compressible and one incompressible 100 KiB one; headers
// include duplicate keys, a null value and (every tenth record) none at all.
func makeRecord(round int, c codec, i int, base time.Time, rnd *rand.Rand) *sent {
	s := &sent{round: round, idx: i, codec: c, key: []byte(fmt.Sprintf("franz-key-%03d", i))}
	switch {
	case i%50 == 3:
		s.value = []byte{}
	case i%50 == 7:
		s.value = nil
	case i == 150:
		s.value = make([]byte, 100<<10)
		rnd.Read(s.value)
	default:
		s.value = []byte(fmt.Sprintf("franz-value-%s-%d-", c.name, i) + strings.Repeat("xyz", (i*31)%400))
	}
	if i%10 != 5 {
		s.headers = []kgo.RecordHeader{
			{Key: "idx", Value: []byte(fmt.Sprint(i))},
			{Key: "codec", Value: []byte(c.name)},
		}
		if i%9 == 0 {
			s.headers = append(s.headers, kgo.RecordHeader{Key: "dup", Value: []byte("a")},
				kgo.RecordHeader{Key: "dup", Value: []byte("b")})
		}
		if i%25 == 0 {
			s.headers = append(s.headers, kgo.RecordHeader{Key: "null", Value: nil},
				kgo.RecordHeader{Key: "empty", Value: []byte{}})
		}
	}
	// Timestamps grow over all rounds, 10 ms apart.
	s.ts = base.Add(time.Duration(round*recordsPerRound+i) * 10 * time.Millisecond)
	return s
}

func showBytes(b []byte) string {
	switch {
	case b == nil:
		return "null"
	case len(b) > 40:
		return fmt.Sprintf("%q...(%d bytes)", b[:40], len(b))
	default:
		return fmt.Sprintf("%q", b)
	}
}

func showHeaders(hs []kgo.RecordHeader) string {
	parts := make([]string, len(hs))
	for i, h := range hs {
		parts[i] = h.Key + "=" + showBytes(h.Value)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func sameBytes(a, b []byte) bool { return (a == nil) == (b == nil) && bytes.Equal(a, b) }

func sameHeaders(a, b []kgo.RecordHeader) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Key != b[i].Key || !sameBytes(a[i].Value, b[i].Value) {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------- clients

func logOpt() kgo.Opt {
	level := kgo.LogLevelWarn
	switch strings.ToLower(os.Getenv("FRANZ_COMPAT_LOG")) {
	case "none":
		level = kgo.LogLevelNone
	case "error":
		level = kgo.LogLevelError
	case "info":
		level = kgo.LogLevelInfo
	case "debug":
		level = kgo.LogLevelDebug
	}
	return kgo.WithLogger(kgo.BasicLogger(os.Stderr, level, func() string {
		return "go: kgo: " + time.Now().Format("15:04:05.000") + " "
	}))
}

func newClient(bootstrap, id string, opts ...kgo.Opt) *kgo.Client {
	base := []kgo.Opt{
		kgo.SeedBrokers(bootstrap),
		kgo.ClientID("sluice-compat-go-" + id),
		kgo.DialTimeout(10 * time.Second),
		kgo.RetryTimeout(opTimeout),
		logOpt(),
	}
	cl, err := kgo.NewClient(append(base, opts...)...)
	if err != nil {
		fatal("%s: kgo.NewClient: %v", id, err)
	}
	return cl
}

func opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), opTimeout)
}

func franzVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/twmb/franz-go" {
				return d.Version
			}
		}
	}
	return "unknown"
}

// ---------------------------------------------------------------- admin

var apiKeys = []struct {
	key  int16
	name string
}{{0, "Produce"}, {1, "Fetch"}, {2, "ListOffsets"}, {3, "Metadata"}, {18, "ApiVersions"},
	{19, "CreateTopics"}, {22, "InitProducerId"}, {8, "OffsetCommit"}, {9, "OffsetFetch"},
	{10, "FindCoordinator"}, {60, "DescribeCluster"}}

// adminChecks: versions, cluster, topic creation, topic metadata. Returns the broker id.
func adminChecks(adm *kadm.Client, cl *kgo.Client) int32 {
	ctx, cancel := opCtx()
	defer cancel()

	// ApiVersions: what the broker offers and what kgo will use.
	vs, err := adm.ApiVersions(ctx)
	if err != nil {
		fatal("kadm ApiVersions: %v", err)
	}
	for _, v := range vs.Sorted() {
		if v.Err != nil {
			fatal("kadm ApiVersions: broker %d: %v", v.NodeID, v.Err)
		}
		var used []string
		for _, k := range apiKeys {
			lo, hi, ok := v.KeyVersions(k.key)
			if !ok {
				fail("ApiVersions: broker %d does not list %s (key %d)", v.NodeID, k.name, k.key)
				continue
			}
			clientMax, _ := kversion.Stable().LookupMaxKeyVersion(k.key)
			used = append(used, fmt.Sprintf("%s v%d-%d (kgo uses v%d)", k.name, lo, hi, min(hi, clientMax)))
		}
		say("ApiVersions: broker %d: %s", v.NodeID, strings.Join(used, ", "))
	}

	// Metadata (kadm BrokerMetadata) and DescribeCluster (raw kmsg): one broker.
	md, err := adm.BrokerMetadata(ctx)
	if err != nil {
		fatal("kadm BrokerMetadata: %v", err)
	}
	var brokers []string
	for _, b := range md.Brokers {
		brokers = append(brokers, fmt.Sprintf("%d@%s:%d", b.NodeID, b.Host, b.Port))
	}
	say("Metadata: cluster %q, controller %d, brokers %v", md.Cluster, md.Controller, brokers)
	if !check(len(md.Brokers) == 1, "Metadata: expected 1 broker, got %v", brokers) {
		fatal("cannot continue without exactly one broker")
	}
	brokerID := md.Brokers[0].NodeID
	check(md.Controller == brokerID, "Metadata: controller %d, expected the broker %d", md.Controller, brokerID)

	dreq := kmsg.NewPtrDescribeClusterRequest()
	dresp, err := dreq.RequestWith(ctx, cl)
	if err != nil {
		fail("DescribeCluster: request failed: %v", err)
	} else {
		var dbrokers []string
		for _, b := range dresp.Brokers {
			dbrokers = append(dbrokers, fmt.Sprintf("%d@%s:%d", b.NodeID, b.Host, b.Port))
		}
		say("DescribeCluster v%d: cluster %q, controller %d, brokers %v", dresp.Version, dresp.ClusterID, dresp.ControllerID, dbrokers)
		check(dresp.ErrorCode == 0, "DescribeCluster: error %v", kerr.ErrorForCode(dresp.ErrorCode))
		check(dresp.ClusterID != "", "DescribeCluster: empty cluster id")
		check(md.Cluster == "" || md.Cluster == dresp.ClusterID,
			"DescribeCluster: cluster id %q differs from Metadata's %q", dresp.ClusterID, md.Cluster)
		check(len(dresp.Brokers) == 1 && dresp.Brokers[0].NodeID == brokerID,
			"DescribeCluster: expected the one broker %d, got %v", brokerID, dbrokers)
	}

	// CreateTopics: 3 partitions, rf 1; creating it again must say TOPIC_ALREADY_EXISTS.
	created, err := adm.CreateTopics(ctx, partitions, 1, nil, topic)
	if err != nil {
		fatal("kadm CreateTopics %s: %v", topic, err)
	}
	ct, err := created.On(topic, nil)
	if err != nil || ct.Err != nil {
		fatal("CreateTopics %s: %v %v %s", topic, err, ct.Err, ct.ErrMessage)
	}
	say("CreateTopics %s: ok (partitions %d, replication factor %d, id %s)", topic, ct.NumPartitions, ct.ReplicationFactor, ct.ID)
	check(ct.NumPartitions == partitions && ct.ReplicationFactor == 1,
		"CreateTopics %s: response says %d partitions, rf %d; expected %d, 1", topic, ct.NumPartitions, ct.ReplicationFactor, partitions)
	again, err := adm.CreateTopics(ctx, partitions, 1, nil, topic)
	if err != nil {
		fail("kadm CreateTopics %s again: %v", topic, err)
	} else if a, _ := again.On(topic, nil); !errors.Is(a.Err, kerr.TopicAlreadyExists) {
		fail("CreateTopics %s again: got error %v, expected TOPIC_ALREADY_EXISTS", topic, a.Err)
	}

	// Topic metadata: 3 partitions, each led by the one broker.
	tmd, err := adm.Metadata(ctx, topic)
	if err != nil {
		fatal("kadm Metadata %s: %v", topic, err)
	}
	td, ok := tmd.Topics[topic]
	if !check(ok && td.Err == nil, "Metadata %s: missing or error %v", topic, td.Err) {
		fatal("cannot continue without the topic")
	}
	check(len(td.Partitions) == partitions, "Metadata %s: %d partitions, expected %d", topic, len(td.Partitions), partitions)
	for p := int32(0); p < partitions; p++ {
		pd, ok := td.Partitions[p]
		if !check(ok, "Metadata %s: partition %d missing", topic, p) {
			continue
		}
		check(pd.Err == nil, "Metadata %s-%d: error %v", topic, p, pd.Err)
		check(pd.Leader == brokerID, "Metadata %s-%d: leader %d, expected %d", topic, p, pd.Leader, brokerID)
		check(len(pd.Replicas) == 1 && pd.Replicas[0] == brokerID, "Metadata %s-%d: replicas %v, expected [%d]", topic, p, pd.Replicas, brokerID)
		check(len(pd.ISR) == 1 && pd.ISR[0] == brokerID, "Metadata %s-%d: isr %v, expected [%d]", topic, p, pd.ISR, brokerID)
	}
	say("Metadata %s: %d partitions, leader/replicas/isr = broker %d, topic id %s", topic, len(td.Partitions), brokerID, td.ID)
	return brokerID
}

// ---------------------------------------------------------------- produce

// produceRound produces one codec's records with ProduceSync and checks the acks:
// every partition used, offsets contiguous from where the previous round ended.
func produceRound(bootstrap string, round int, c codec, base time.Time, next map[int32]int64) []*sent {
	rnd := rand.New(rand.NewSource(int64(round) + 1))
	recs := make([]*sent, recordsPerRound)
	krecs := make([]*kgo.Record, recordsPerRound)
	for i := range recs {
		s := makeRecord(round, c, i, base, rnd)
		recs[i] = s
		krecs[i] = &kgo.Record{Topic: topic, Key: s.key, Value: s.value, Headers: s.headers, Timestamp: s.ts}
	}

	cl := newClient(bootstrap, "producer-"+c.name,
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerBatchCompression(c.codec),
		kgo.ProducerLinger(5*time.Millisecond),
		kgo.ProduceRequestTimeout(15*time.Second),
	)
	defer cl.Close()
	ctx, cancel := opCtx()
	defer cancel()
	t0 := time.Now()
	results := cl.ProduceSync(ctx, krecs...)
	if err := results.FirstErr(); err != nil {
		n := 0
		for _, r := range results {
			if r.Err != nil {
				n++
			}
		}
		fatal("%s: ProduceSync: %d of %d records failed, first error: %v", c.name, n, len(results), err)
	}
	// ProduceSync gives the results in completion order: match them up by record.
	index := make(map[*kgo.Record]int, len(krecs))
	for i, r := range krecs {
		index[r] = i
	}
	for _, r := range results {
		i, ok := index[r.Record]
		if !ok {
			fatal("%s: ProduceSync returned a record that was not produced", c.name)
		}
		recs[i].partition, recs[i].offset = r.Record.Partition, r.Record.Offset
	}

	perPartition := map[int32]int{}
	for _, s := range recs {
		perPartition[s.partition]++
		want := next[s.partition]
		if !check(s.offset == want, "%s: ack of record %d: %s-%d offset %d, expected %d (send order, contiguous)",
			c.name, s.idx, topic, s.partition, s.offset, want) {
			want = s.offset // resynchronise so that one gap is reported once
		}
		next[s.partition] = want + 1
	}
	check(len(perPartition) == partitions, "%s: records landed in %d partitions %v, expected %d", c.name, len(perPartition), perPartition, partitions)
	say("produce %-6s: %d records acked in %d ms, per partition %v", c.name, len(recs), time.Since(t0).Milliseconds(), perPartition)
	return recs
}

// ---------------------------------------------------------------- consume

// consume reads every partition from the given offsets up to the end offsets with a
// group-less consumer and checks each record against what was produced.
func consume(bootstrap, what string, from map[int32]int64, end map[int32]int64, byOffset map[int32][]*sent) {
	offsets := map[int32]kgo.Offset{}
	want := 0
	for p := int32(0); p < partitions; p++ {
		if from[p] == 0 {
			offsets[p] = kgo.NewOffset().AtStart()
		} else {
			offsets[p] = kgo.NewOffset().At(from[p])
		}
		want += int(end[p] - from[p])
	}
	cl := newClient(bootstrap, "consumer-"+what,
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: offsets}),
		kgo.FetchMaxWait(500*time.Millisecond),
		kgo.FetchMaxPartitionBytes(256<<10), // several fetches per partition
	)
	defer cl.Close()

	ctx, cancel := opCtx()
	defer cancel()
	t0 := time.Now()
	next := map[int32]int64{}
	for p, o := range from {
		next[p] = o
	}
	got := 0
	codecSeen := map[string]map[uint8]int{} // round codec -> batch codec -> records
	for got < want {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			break
		}
		for _, fe := range fs.Errors() {
			fail("%s: fetch error on %s-%d: %v", what, fe.Topic, fe.Partition, fe.Err)
		}
		if len(fs.Errors()) > 0 && reported > maxReported {
			break
		}
		fs.EachRecord(func(r *kgo.Record) {
			got++
			p := r.Partition
			if !check(r.Topic == topic && p >= 0 && p < partitions, "%s: record from unexpected %s-%d", what, r.Topic, p) {
				return
			}
			if !check(r.Offset == next[p], "%s: %s-%d: got offset %d, expected %d (order/gap)", what, topic, p, r.Offset, next[p]) {
				if r.Offset < next[p] {
					return // a duplicate: already checked
				}
			}
			next[p] = r.Offset + 1
			if r.Offset >= int64(len(byOffset[p])) {
				fail("%s: %s-%d offset %d is past the %d records produced", what, topic, p, r.Offset, len(byOffset[p]))
				return
			}
			s := byOffset[p][r.Offset]
			check(sameBytes(r.Key, s.key), "%s: %v: key %s, expected %s", what, s, showBytes(r.Key), showBytes(s.key))
			check(sameBytes(r.Value, s.value), "%s: %v: value %s, expected %s", what, s, showBytes(r.Value), showBytes(s.value))
			check(sameHeaders(r.Headers, s.headers), "%s: %v: headers %s, expected %s", what, s, showHeaders(r.Headers), showHeaders(s.headers))
			check(r.Timestamp.UnixMilli() == s.ts.UnixMilli(), "%s: %v: timestamp %d, expected %d", what, s,
				r.Timestamp.UnixMilli(), s.ts.UnixMilli())
			// kgo's default idempotent producer: every batch carries the producer id the
			// broker handed out with InitProducerId (kgo would quietly fall back to -1).
			check(r.ProducerID >= 0, "%s: %v: producer id %d, expected an idempotent producer's id", what, s, r.ProducerID)
			check(r.Attrs.TimestampType() == 0, "%s: %v: timestamp type %d, expected 0 (CreateTime)", what, s, r.Attrs.TimestampType())
			ct := r.Attrs.CompressionType()
			// kgo sends a batch uncompressed when compressing does not make it smaller.
			check(ct == s.codec.attr || ct == 0, "%s: %v: batch codec %d, expected %d (%s) or 0",
				what, s, ct, s.codec.attr, s.codec.name)
			if codecSeen[s.codec.name] == nil {
				codecSeen[s.codec.name] = map[uint8]int{}
			}
			codecSeen[s.codec.name][ct]++
		})
	}
	for p := int32(0); p < partitions; p++ {
		check(next[p] == end[p], "%s: %s-%d: read up to offset %d, expected %d (%d of %d records in %s)",
			what, topic, p, next[p], end[p], got, want, time.Since(t0).Round(time.Millisecond))
	}
	if what == "from-start" {
		for _, c := range codecs[1:] {
			check(codecSeen[c.name][c.attr] > 0, "%s: no %s round record came back in a %s batch (codecs seen %v)",
				what, c.name, c.name, codecSeen[c.name])
		}
	}
	say("consume %s: %d of %d records in %d ms; batch codecs per round %v", what, got, want, time.Since(t0).Milliseconds(), codecSeen)
}

// ---------------------------------------------------------------- offsets

func listedOffset(l kadm.ListedOffsets, err error, what string, p int32) (kadm.ListedOffset, bool) {
	if err != nil {
		fail("kadm %s: %v", what, err)
		return kadm.ListedOffset{}, false
	}
	o, ok := l.Lookup(topic, p)
	if !check(ok, "kadm %s: no answer for %s-%d", what, topic, p) {
		return o, false
	}
	return o, check(o.Err == nil, "kadm %s: %s-%d: %v", what, topic, p, o.Err)
}

func offsetChecks(adm *kadm.Client, byOffset map[int32][]*sent, base time.Time) {
	ctx, cancel := opCtx()
	defer cancel()
	start, serr := adm.ListStartOffsets(ctx, topic)
	end, eerr := adm.ListEndOffsets(ctx, topic)
	committed, cerr := adm.ListCommittedOffsets(ctx, topic) // read_committed: the last stable offset
	maxTS, merr := adm.ListMaxTimestampOffsets(ctx, topic)
	var summary []string
	for p := int32(0); p < partitions; p++ {
		n := int64(len(byOffset[p]))
		if o, ok := listedOffset(start, serr, "ListStartOffsets", p); ok {
			check(o.Offset == 0, "ListStartOffsets %s-%d = %d, expected 0", topic, p, o.Offset)
		}
		if o, ok := listedOffset(end, eerr, "ListEndOffsets", p); ok {
			check(o.Offset == n, "ListEndOffsets %s-%d = %d, expected %d", topic, p, o.Offset, n)
			summary = append(summary, fmt.Sprintf("%d:[0,%d)", p, o.Offset))
		}
		if o, ok := listedOffset(committed, cerr, "ListCommittedOffsets", p); ok {
			check(o.Offset == n, "ListCommittedOffsets (read_committed) %s-%d = %d, expected %d", topic, p, o.Offset, n)
		}
		if o, ok := listedOffset(maxTS, merr, "ListMaxTimestampOffsets", p); ok && n > 0 {
			last := byOffset[p][n-1] // timestamps grow with the offsets
			check(o.Offset == last.offset && o.Timestamp == last.ts.UnixMilli(),
				"ListMaxTimestampOffsets %s-%d = offset %d timestamp %d, expected offset %d timestamp %d",
				topic, p, o.Offset, o.Timestamp, last.offset, last.ts.UnixMilli())
		}
	}

	// Offsets by timestamp: the first record at or after it, else the end offset.
	step := 10 * time.Millisecond
	all := len(codecs) * recordsPerRound
	targets := []time.Time{base.Add(-time.Hour), base, base.Add(77 * step), base.Add(77*step - 3*time.Millisecond),
		base.Add(time.Duration(recordsPerRound+150) * step), base.Add(time.Duration(3*recordsPerRound+1)*step - time.Millisecond),
		base.Add(time.Duration(all-1) * step), base.Add(time.Duration(all) * step)}
	for _, t := range targets {
		ms := t.UnixMilli()
		got, err := adm.ListOffsetsAfterMilli(ctx, ms, topic)
		what := fmt.Sprintf("ListOffsetsAfterMilli(base%+d ms)", ms-base.UnixMilli())
		for p := int32(0); p < partitions; p++ {
			o, ok := listedOffset(got, err, what, p)
			if !ok {
				continue
			}
			wantOff, wantTS := int64(len(byOffset[p])), int64(-1)
			for _, s := range byOffset[p] {
				if s.ts.UnixMilli() >= ms {
					wantOff, wantTS = s.offset, s.ts.UnixMilli()
					break
				}
			}
			if wantTS >= 0 {
				check(o.Offset == wantOff && o.Timestamp == wantTS, "%s %s-%d = offset %d timestamp %d, expected offset %d timestamp %d",
					what, topic, p, o.Offset, o.Timestamp, wantOff, wantTS)
			} else {
				check(o.Offset == wantOff, "%s %s-%d = offset %d, expected the end offset %d", what, topic, p, o.Offset, wantOff)
			}
		}
	}
	say("offsets: start/end %s, read_committed end, max timestamp and %d timestamp look-ups checked", strings.Join(summary, " "), len(targets))
}

// ---------------------------------------------------------------- main

func main() {
	if len(os.Args) != 2 || strings.HasPrefix(os.Args[1], "-") {
		fmt.Fprintln(os.Stderr, "usage: franz-compat HOST:PORT")
		os.Exit(2)
	}
	bootstrap := os.Args[1]
	say("franz-go %s against %s", franzVersion(), bootstrap)

	admCl := newClient(bootstrap, "admin")
	defer admCl.Close()
	adm := kadm.NewClient(admCl)
	adm.SetTimeoutMillis(15000)
	adminChecks(adm, admCl)

	base := time.UnixMilli((time.Now().Add(-10 * time.Minute)).UnixMilli())
	next := map[int32]int64{}
	var all []*sent
	for round, c := range codecs {
		all = append(all, produceRound(bootstrap, round, c, base, next)...)
	}

	byOffset := map[int32][]*sent{}
	for _, s := range all {
		byOffset[s.partition] = append(byOffset[s.partition], s)
	}
	end := map[int32]int64{}
	middle := map[int32]int64{}
	for p, l := range byOffset {
		sort.Slice(l, func(i, j int) bool { return l[i].offset < l[j].offset })
		for i, s := range l {
			if s.offset != int64(i) {
				fatal("%s-%d: acked offsets are not 0..%d (offset %d at position %d)", topic, p, len(l)-1, s.offset, i)
			}
		}
		end[p] = int64(len(l))
		middle[p] = int64(len(l)) / 2
	}

	consume(bootstrap, "from-start", map[int32]int64{}, end, byOffset)
	consume(bootstrap, "from-middle", middle, end, byOffset)
	offsetChecks(adm, byOffset, base)
	committedChecks(adm, middle)
	finish(0)
}

// committedChecks: a group's offsets committed and fetched back with kadm (FindCoordinator,
// OffsetCommit, OffsetFetch), metadata included.
func committedChecks(adm *kadm.Client, at map[int32]int64) {
	ctx, cancel := opCtx()
	defer cancel()
	const group = "franz-compat-group"
	var commit kadm.Offsets
	for p, o := range at {
		commit.Add(kadm.Offset{Topic: topic, Partition: p, At: o, LeaderEpoch: -1, Metadata: fmt.Sprintf("go-%d", p)})
	}
	resp, err := adm.CommitOffsets(ctx, group, commit)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		fail("CommitOffsets %s: %v", group, err)
		return
	}
	fetched, err := adm.FetchOffsets(ctx, group)
	if err == nil {
		err = fetched.Error()
	}
	if err != nil {
		fail("FetchOffsets %s: %v", group, err)
		return
	}
	for p, o := range at {
		got, ok := fetched.Lookup(topic, p)
		check(ok && got.At == o && got.Metadata == fmt.Sprintf("go-%d", p),
			"FetchOffsets %s: %s-%d = %+v (found %v), expected %d go-%d", group, topic, p, got.Offset, ok, o, p)
	}
	say("committed offsets: %d partitions committed and fetched back for group %s", len(at), group)
}
