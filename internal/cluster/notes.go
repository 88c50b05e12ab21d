package cluster

import "fmt"

// Notes are what a valid definition trades away, which its operator must
// know before clients meet it (docs/clients.md measures each): vet prints
// them. Brokers joined by bridges are not one broker in every respect.
func (c *Cluster) Notes() []string {
	brokers := len(c.WithRole(Broker))
	if brokers < 2 {
		return nil
	}
	notes := []string{fmt.Sprintf("shared subscriptions ($share/GROUP/...) are shared within a broker only: a message goes to one member of a group on each of the %d brokers that has one, up to %d copies in all; put a group's members on one broker (docs/clients.md)", brokers, brokers)}
	switch c.MQTT.BridgeProtocol {
	case "mqttv50":
		notes = append(notes, "mqtt.bridgeProtocol is mqttv50: MQTT 5 properties cross between brokers, but a broker ends the bridge's session with its connection (mosquitto 2.0 bridges ask for no session expiry): what is published on a broker while its bridge reconnects or the bridge master moves reaches no other broker")
	default:
		notes = append(notes, "mqtt.bridgeProtocol is mqttv311: messages between clients on different brokers lose their MQTT 5 properties (user properties, response topic, correlation data, message expiry, content type); set mqttv50 to keep them, at the cost of what is published while a bridge reconnects (docs/clients.md)")
	}
	return notes
}
