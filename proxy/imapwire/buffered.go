package imapwire

// BufferedBytes returns a copy of the bytes read from the connection but not yet
// parsed: what a client pipelined behind its login, to be forwarded first.
func (r *Reader) BufferedBytes() []byte {
	b, _ := r.r.Peek(r.r.Buffered())
	return append([]byte(nil), b...)
}
