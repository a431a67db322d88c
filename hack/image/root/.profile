# ~/.profile on the warmvm demo work disk
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
PS1='\u@\h:\w\$ '
echo "Welcome to $(hostname) (warmvm demo). See ~/README."
