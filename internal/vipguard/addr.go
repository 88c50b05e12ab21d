package vipguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"github.com/vishvananda/netlink"
)

// Held reports whether a is on its interface.
func Held(a Addr) (bool, error) {
	link, err := netlink.LinkByName(a.Interface)
	if err != nil {
		return false, fmt.Errorf("interface %s: %w", a.Interface, err)
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return false, fmt.Errorf("addresses of %s: %w", a.Interface, err)
	}
	for _, x := range addrs {
		if ip, ok := netipOf(x.IP); ok && ip == a.Prefix.Addr() {
			return true, nil
		}
	}
	return false, nil
}

// Release deletes a from its interface; gone already is no error.
func Release(a Addr) error {
	link, err := netlink.LinkByName(a.Interface)
	if err != nil {
		return fmt.Errorf("interface %s: %w", a.Interface, err)
	}
	ip := net.IP(a.Prefix.Addr().AsSlice())
	bits := 32
	if a.Prefix.Addr().Is6() {
		bits = 128
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(a.Prefix.Bits(), bits)}}
	if err := netlink.AddrDel(link, addr); err != nil && !errors.Is(err, syscall.EADDRNOTAVAIL) {
		return fmt.Errorf("delete %s: %w", a, err)
	}
	return nil
}

func netipOf(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}
