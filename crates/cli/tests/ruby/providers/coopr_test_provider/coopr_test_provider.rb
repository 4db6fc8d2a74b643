# encoding: UTF-8
#
# A provider for coopr's tests: a machine is a JSON file in the provider's `cloud_dir`.

require 'json'
require 'fileutils'

class CooprTestProvider < Coopr::Plugin::Provider
  def machine_file(fields, providerid)
    File.join(fields['cloud_dir'], "#{providerid}.json")
  end

  def create(inputmap)
    fields = inputmap['fields']
    FileUtils.mkdir_p(fields['cloud_dir'])
    providerid = "m-#{inputmap['hostname']}"
    path = machine_file(fields, providerid)
    raise "machine #{providerid} exists already" if File.exist?(path)

    # Addresses are handed out in creation order, under a lock (workers run in parallel).
    number = File.open(File.join(fields['cloud_dir'], 'counter'), File::RDWR | File::CREAT) do |f|
      f.flock(File::LOCK_EX)
      n = f.read.to_i + 1
      f.rewind
      f.write(n.to_s)
      f.flush
      f.truncate(f.pos)
      n
    end
    File.write(path, JSON.generate('hostname' => inputmap['hostname'], 'flavor' => inputmap['flavor'],
                                   'image' => inputmap['image'], 'address' => "10.0.#{number / 250}.#{number % 250 + 1}"))
    @result['status'] = 0
    @result['result']['providerid'] = providerid
  end

  def confirm(inputmap)
    path = machine_file(inputmap['fields'], inputmap['providerid'])
    raise "machine #{inputmap['providerid']} does not exist" unless File.exist?(path)

    address = JSON.parse(File.read(path))['address']
    @result['status'] = 0
    # As the fog provider answers: addresses at the top (the node's), ssh-auth under result
    # (passed on to later tasks).
    @result['ipaddresses'] = { 'access_v4' => address, 'bind_v4' => address }
    @result['result']['ssh-auth'] = { 'user' => 'coopr', 'password' => 'unused' }
  end

  def delete(inputmap)
    path = machine_file(inputmap['fields'], inputmap['providerid'])
    File.delete(path) if File.exist?(path)
    @result['status'] = 0
  end
end
