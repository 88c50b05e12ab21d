package soak

import (
	"fmt"
	"hash/fnv"
	"image/color"
	"os"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Lanes of the timeline's first panel, bottom to top.
var lanes = []string{"bridge master", "VIP holder", "git", "commits", "faults: broker", "faults: bridge", "faults: lb"}

// Timeline draws the run as a PNG at path: faults and commits as bands,
// the VIP and bridge holders, delivered messages per second, the p99
// latency, and every breach as a red line across all three panels.
func Timeline(r *Run, breaches []Breach, path string) error {
	sec := func(t time.Time) float64 { return t.Sub(r.Start).Seconds() }
	lane := func(name string) float64 {
		for i, l := range lanes {
			if l == name {
				return float64(i)
			}
		}
		return 0
	}
	top := plot.New()
	top.Title.Text = fmt.Sprintf("soak, seed %d: faults, commits, holders", r.Config.Seed)
	var ticks []plot.Tick
	for i, l := range lanes {
		ticks = append(ticks, plot.Tick{Value: float64(i), Label: l})
	}
	top.Y.Tick.Marker = plot.ConstantTicks(ticks)
	top.Y.Min, top.Y.Max = -0.6, float64(len(lanes))-0.4
	var names plotter.XYLabels // what each band is, written at its start
	label := func(x, y float64, text string) {
		names.XYs = append(names.XYs, plotter.XY{X: x, Y: y - 0.15})
		names.Labels = append(names.Labels, text)
	}
	for _, e := range r.Events {
		name := "commits"
		if e.Commit == "" {
			name = map[string]string{"lb": "faults: lb", "bridge": "faults: bridge", "broker": "faults: broker", "git": "git"}[e.Group(r.Config.Nodes)]
		}
		end := e.End
		if e.Commit != "" || end.Sub(e.Start) < 2*time.Second {
			end = e.Start.Add(2 * time.Second) // a commit is an instant: drawn 2 s wide
		}
		if err := band(top, sec(e.Start), sec(end), lane(name), colorOf(e.Fault+e.Commit)); err != nil {
			return err
		}
		text := e.Commit
		if e.Commit == "" {
			text = strings.TrimSpace(e.Fault + " " + e.Unit + " " + e.Node)
		}
		label(sec(e.Start), lane(name), text)
	}
	for _, holder := range []struct {
		lane string
		of   func(Sample) string
	}{{"VIP holder", func(s Sample) string {
		if len(s.VIPHolders) == 0 {
			return ""
		}
		return s.VIPHolders[0]
	}}, {"bridge master", func(s Sample) string { return s.BridgeHold }}} {
		from, who := 0, ""
		for i := 0; i <= len(r.Samples); i++ {
			cur := ""
			if i < len(r.Samples) {
				cur = holder.of(r.Samples[i])
			}
			if i < len(r.Samples) && cur == who {
				continue
			}
			if who != "" && i > from {
				to := r.End
				if i < len(r.Samples) {
					to = r.Samples[i].At
				}
				if err := band(top, sec(r.Samples[from].At), sec(to), lane(holder.lane), colorOf(who)); err != nil {
					return err
				}
				label(sec(r.Samples[from].At), lane(holder.lane), who)
			}
			from, who = i, cur
		}
	}
	if len(names.Labels) > 0 {
		l, err := plotter.NewLabels(names)
		if err != nil {
			return err
		}
		for i := range l.TextStyle {
			l.TextStyle[i].Font.Size = vg.Points(7)
		}
		top.Add(l)
	}
	rate, lat := plot.New(), plot.New()
	rate.Y.Label.Text, lat.Y.Label.Text = "delivered msg/s", "p99 latency (ms)"
	lat.X.Label.Text = "seconds since the start"
	var delivered, p99 plotter.XYs
	for _, s := range r.Samples {
		delivered = append(delivered, plotter.XY{X: sec(s.At), Y: float64(s.Delivered)})
		p99 = append(p99, plotter.XY{X: sec(s.At), Y: float64(s.P99) / float64(time.Millisecond)})
	}
	for _, pl := range []struct {
		p   *plot.Plot
		xys plotter.XYs
	}{{rate, delivered}, {lat, p99}} {
		if len(pl.xys) > 0 {
			l, err := plotter.NewLine(pl.xys)
			if err != nil {
				return err
			}
			pl.p.Add(l)
		}
	}
	rate.Y.Min, lat.Y.Min = 0, 0
	end := sec(r.End)
	for _, p := range []*plot.Plot{top, rate, lat} {
		p.X.Min, p.X.Max = 0, end
		p.Add(plotter.NewGrid())
		for _, b := range breaches {
			x := sec(b.At)
			y0, y1 := p.Y.Min, p.Y.Max
			if p != top {
				y0, y1 = 0, maxY(p)
			}
			l, err := plotter.NewLine(plotter.XYs{{X: x, Y: y0}, {X: x, Y: y1}})
			if err != nil {
				return err
			}
			l.Color, l.Width = color.RGBA{R: 220, A: 255}, vg.Points(1.5)
			p.Add(l)
		}
	}
	img := vgimg.New(vg.Points(1100), vg.Points(760))
	dc := draw.New(img)
	plots := [][]*plot.Plot{{top}, {rate}, {lat}}
	canvases := plot.Align(plots, draw.Tiles{Rows: 3, Cols: 1, PadY: vg.Points(6), PadX: vg.Points(6)}, dc)
	for i := range plots {
		plots[i][0].Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// band draws [x0, x1] on lane y.
func band(p *plot.Plot, x0, x1, y float64, c color.Color) error {
	poly, err := plotter.NewPolygon(plotter.XYs{{X: x0, Y: y - 0.35}, {X: x1, Y: y - 0.35}, {X: x1, Y: y + 0.35}, {X: x0, Y: y + 0.35}})
	if err != nil {
		return err
	}
	poly.Color, poly.LineStyle.Width = c, 0
	p.Add(poly)
	return nil
}

// maxY is the top of a panel's data (Add widened the axis to it).
func maxY(p *plot.Plot) float64 { return max(p.Y.Max, 1) }

// colorOf gives each name its own color, the same in every run.
func colorOf(name string) color.Color {
	h := fnv.New32a()
	h.Write([]byte(name))
	v := h.Sum32()
	return color.RGBA{R: uint8(60 + v%160), G: uint8(60 + (v>>8)%160), B: uint8(60 + (v>>16)%160), A: 255}
}
